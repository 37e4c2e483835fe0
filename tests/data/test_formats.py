"""Conversations rendered with loss masks (lm/data/formats.py), token by token, for the byte,
SentencePiece and Hugging Face (Llama-3, Qwen2, {% generation %}) chat templates."""

import re

import numpy as np
import pytest

from lm.data import formats
from lm.data import tokenizer as tokenizer_lib

CONVERSATION = [
    {"role": "system", "content": "Answer with a number."},
    {"role": "user", "content": "Add: 12+30"},
    {"role": "assistant", "content": "42"},
    {"role": "user", "content": "And 5+5?"},
    {"role": "assistant", "content": "10, of course"},
]
ASSISTANT = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | "
    "trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# Qwen2's layout with the assistant's text marked, as SmolLM3 / TRL templates mark it.
GENERATION_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{{ '\n' }}{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}")


def role_token_expectation(tokenizer, ids) -> np.ndarray:
  """From the rendered ids alone: a token is the assistant's from the one after <assistant>
  through the next <end_of_turn>."""
  specials = tokenizer.special_ids
  expected, inside = np.zeros(len(ids), bool), False
  for i, token in enumerate(ids):
    if inside:
      expected[i] = True
      inside = token != specials["<end_of_turn>"]
    elif token == specials["<assistant>"]:
      inside = True
  return expected


def check_role_tokens(tokenizer):
  ids, mask = formats.render_with_mask(tokenizer, CONVERSATION)
  np.testing.assert_array_equal(ids, tokenizer.render_chat(CONVERSATION))
  np.testing.assert_array_equal(mask, role_token_expectation(tokenizer, ids))
  # Each run of masked tokens is one assistant turn: its text, then <end_of_turn>.
  runs = np.split(ids[mask], np.flatnonzero(np.diff(np.flatnonzero(mask)) > 1) + 1)
  assert [tokenizer.decode(run) for run in runs] == ASSISTANT
  assert all(run[-1] == tokenizer.special_ids["<end_of_turn>"] for run in runs)


def test_byte_template_masks_every_assistant_turn_and_nothing_else():
  tokenizer = tokenizer_lib.ByteTokenizer()
  check_role_tokens(tokenizer)
  ids, mask = formats.render_with_mask(tokenizer, CONVERSATION)
  assert mask.sum() == sum(len(a.encode()) + 1 for a in ASSISTANT)


def test_sentencepiece_template(tmp_path):
  from tests.data.test_sentencepiece import corpus  # pylint: disable=import-outside-toplevel
  tokenizer = tokenizer_lib.train_sentencepiece(corpus(50_000), str(tmp_path / "s.model"),
                                                vocab_size=400)
  check_role_tokens(tokenizer)


def hf_tokenizer(directory, template: str, specials: list[str], bos: str, eos: str):
  from tests.interop import hf_models  # pylint: disable=import-outside-toplevel
  hf_tok = hf_models.make_tokenizer("byte_level")
  hf_tok.add_special_tokens({"additional_special_tokens": specials})
  hf_tok.bos_token, hf_tok.eos_token = bos, eos
  hf_tok.chat_template = template
  hf_tok.save_pretrained(str(directory))
  return hf_tok, tokenizer_lib.HFTokenizer(str(directory))


def check_hf(hf_tok, tokenizer, pattern: str, expected_turns: list[str]):
  """The mask against spans found in the rendered string by `pattern` (group 1: what the
  assistant must produce), token by token; the ids against transformers' own rendering."""
  ids, mask = formats.render_with_mask(tokenizer, CONVERSATION)
  assert list(ids) == list(hf_tok.apply_chat_template(CONVERSATION, tokenize=True,
                                                      return_dict=False))
  text = tokenizer.render_chat(CONVERSATION)
  spans = [m.span(1) for m in re.finditer(pattern, text, re.DOTALL)]
  _, offsets = tokenizer.encode_with_offsets(text)
  expected = [any(a <= start < b for a, b in spans) for start, _ in offsets]
  np.testing.assert_array_equal(mask, expected)
  runs = np.split(ids[mask], np.flatnonzero(np.diff(np.flatnonzero(mask)) > 1) + 1)
  assert [hf_tok.decode(run) for run in runs] == expected_turns


def test_llama3_template(tmp_path):
  specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
  hf_tok, tokenizer = hf_tokenizer(tmp_path, LLAMA3_TEMPLATE, specials, "<|begin_of_text|>",
                                   "<|eot_id|>")
  check_hf(hf_tok, tokenizer, r"<\|start_header_id\|>assistant<\|end_header_id\|>\n\n"
           r"(.*?<\|eot_id\|>)", [a.strip() + "<|eot_id|>" for a in ASSISTANT])


def test_qwen2_template(tmp_path):
  specials = ["<|im_start|>", "<|im_end|>"]
  hf_tok, tokenizer = hf_tokenizer(tmp_path, QWEN2_TEMPLATE, specials, "<s>", "<|im_end|>")
  check_hf(hf_tok, tokenizer, r"<\|im_start\|>assistant\n(.*?<\|im_end\|>)",
           [a + "<|im_end|>" for a in ASSISTANT])


def test_generation_blocks_match_transformers_assistant_mask(tmp_path):
  specials = ["<|im_start|>", "<|im_end|>"]
  hf_tok, tokenizer = hf_tokenizer(tmp_path, GENERATION_TEMPLATE, specials, "<s>", "<|im_end|>")
  ids, mask = formats.render_with_mask(tokenizer, CONVERSATION)
  out = hf_tok.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True,
                                   return_assistant_tokens_mask=True)
  assert list(ids) == list(out["input_ids"])
  np.testing.assert_array_equal(mask, np.array(out["assistant_masks"], bool))
  assert mask.any()


def test_a_template_that_rewrites_history_is_refused(tmp_path):
  # Renders only the last user turn: a shorter conversation is not a prefix of a longer one.
  template = ("{{ messages[-1]['role'] }}: {{ messages[-1]['content'] }}"
              "{% if add_generation_prompt %}assistant: {% endif %}")
  _, tokenizer = hf_tokenizer(tmp_path, template, [], "<s>", "</s>")
  with pytest.raises(ValueError, match="generation"):
    formats.render_with_mask(tokenizer, CONVERSATION)


@pytest.mark.parametrize("record, fields, message", [
    ({"messages": []}, ("messages",), "non-empty list"),
    ({"messages": [{"role": "bot", "content": "x"}]}, ("messages",), "item 0"),
    ({"messages": [{"role": "user", "content": "x"}]}, ("messages",), "no assistant turn"),
    ({"prompt": 1, "completion": "x"}, ("prompt", "completion"), "'prompt' must be a string"),
])
def test_bad_records_name_the_field(record, fields, message):
  with pytest.raises(ValueError, match=message):
    formats.messages_of(record, fields)


def test_prompt_completion_is_one_user_and_one_assistant_turn():
  assert formats.messages_of({"prompt": "p", "completion": "c", "x": 1},
                             ("prompt", "completion")) == [
      {"role": "user", "content": "p"}, {"role": "assistant", "content": "c"}]
