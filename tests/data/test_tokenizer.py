import numpy as np

from lm.data import tokenizer as tokenizer_lib


def test_byte_round_trip_with_specials():
  tok = tokenizer_lib.get("byte")
  text = "Grüße, 世界! \n\t"
  ids = tok.encode(text, add_bos=True, add_eos=True)
  assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
  assert len(ids) == len(text.encode("utf-8")) + 2
  assert tok.decode(ids) == text
  assert ids.max() < tok.vocab_size


def test_specials_are_distinct_and_carry_no_bytes():
  tok = tokenizer_lib.get("byte")
  specials = list(tok.special_ids.values())
  assert len(set(specials)) == len(specials) and min(specials) == 256
  assert {"<system>", "<user>", "<assistant>"} <= set(tok.special_ids)
  assert tok.token_bytes[:256].tolist() == [1] * 256
  assert not np.any(tok.token_bytes[specials])


def test_unknown_tokenizer_names_the_field():
  try:
    tokenizer_lib.get("wordpiece")
  except ValueError as e:
    assert "data.tokenizer" in str(e)
  else:
    raise AssertionError("expected ValueError")
