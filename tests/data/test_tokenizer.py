import json
import os

import pytest

from lm.data import tokenizer as tokenizer_lib


def test_byte_round_trip_with_specials():
  tok = tokenizer_lib.get("byte")
  text = "Grüße, 世界! \n\t"
  ids = tok.encode(text, add_bos=True, add_eos=True)
  assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
  assert len(ids) == len(text.encode("utf-8")) + 2
  assert tok.decode(ids) == text
  assert ids.max() < tok.vocab_size


def test_specials_are_distinct():
  tok = tokenizer_lib.get("byte")
  specials = list(tok.special_ids.values())
  assert len(set(specials)) == len(specials) and min(specials) == 256
  assert {"<system>", "<user>", "<assistant>"} <= set(tok.special_ids)


def test_unknown_tokenizer_names_the_field():
  try:
    tokenizer_lib.get("wordpiece")
  except ValueError as e:
    assert "data.tokenizer" in str(e)
  else:
    raise AssertionError("expected ValueError")


# Hugging Face tokenizer.json directories (`hf:DIR`), against transformers; the test
# tokenizers are trained locally (tests/interop/hf_models.py).

MESSAGES = [{"role": "system", "content": "  Be brief.  "},
            {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "Grüße! 🙂"}]


@pytest.fixture(scope="module", params=["byte_level", "metaspace"])
def hf_pair(request, tmp_path_factory):
  from tests.interop import hf_models  # pylint: disable=import-outside-toplevel
  reference = hf_models.make_tokenizer(request.param)
  directory = str(tmp_path_factory.mktemp(request.param))
  reference.save_pretrained(directory)
  return request.param, reference, tokenizer_lib.get(f"hf:{directory}"), directory


def test_hf_ids_match_transformers(hf_pair):
  from tests.interop import hf_models  # pylint: disable=import-outside-toplevel
  _, reference, ours, _ = hf_pair
  assert ours.vocab_size == len(reference)
  assert (ours.bos_id, ours.eos_id, ours.pad_id) == (
      reference.bos_token_id, reference.eos_token_id, reference.pad_token_id)
  for text in hf_models.TEXTS:
    expected = reference(text, add_special_tokens=False)["input_ids"]
    assert ours.encode(text).tolist() == expected, text
    # transformers' default adds bos through the post-processor; lm asks for it explicitly.
    assert ours.encode(text, add_bos=True).tolist() == reference(text)["input_ids"], text
    assert ours.encode(text, add_eos=True).tolist()[-1] == reference.eos_token_id
    assert ours.decode(expected) == reference.decode(expected, skip_special_tokens=True)


def test_hf_chat_template_renders_like_transformers(hf_pair):
  _, reference, ours, _ = hf_pair
  for messages in (MESSAGES, MESSAGES[1:3]):
    for prompt in (False, True):
      assert ours.render_chat(messages, add_generation_prompt=prompt) == (
          reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt))


def test_hf_chat_template_from_tokenizer_config(hf_pair, tmp_path):
  """Older directories keep the template inside tokenizer_config.json."""
  _, reference, ours, directory = hf_pair
  for name in ("tokenizer.json", "tokenizer_config.json"):
    with open(os.path.join(directory, name), "rb") as f:
      (tmp_path / name).write_bytes(f.read())
  config = json.loads((tmp_path / "tokenizer_config.json").read_text())
  config["chat_template"] = reference.chat_template
  config["bos_token"] = {"content": "<s>", "special": True}  # the dict spelling
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
  legacy = tokenizer_lib.get(f"hf:{tmp_path}")
  assert legacy.bos_id == ours.bos_id
  assert legacy.render_chat(MESSAGES, True) == ours.render_chat(MESSAGES, True)


def test_hf_bits_per_byte_counts_the_text(hf_pair):
  """Bits per byte divides by the evaluated text's UTF-8 bytes, one per document end: neither
  Metaspace's leading "▁" nor a multi-byte character is miscounted."""
  from tests.data import test_pipeline  # pylint: disable=import-outside-toplevel
  from tests.interop import hf_models  # pylint: disable=import-outside-toplevel
  kind, _, ours, _ = hf_pair
  docs = hf_models.TEXTS if kind == "byte_level" else ["hello world, this is a small test",
                                                       "another document ends here"] * 3
  test_pipeline.check_eval_set_scores_the_text(ours, docs)


def test_hf_tokenizer_errors_name_the_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match="tokenizer.json"):
    tokenizer_lib.get(f"hf:{tmp_path}")
