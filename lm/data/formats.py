"""Records as the post-training stages read them: conversations, rendered with loss masks.

Formats (one JSON object per record):

  chat               {"messages": [{"role": "system" | "user" | "assistant", "content": str},
                     ...]}: any number of turns, an optional system message first
  prompt/completion  {"prompt": str, "completion": str}: one user turn, one assistant turn

A conversation is rendered with the tokenizer's own chat template (`render_chat`: the
built-in role tokens of the byte and SentencePiece tokenizers, the Hugging Face
`chat_template` of an hf: tokenizer), so training sees exactly what `lm chat` / `lm serve`
will send. The loss mask covers the assistant's tokens only: every assistant turn, its
end-of-turn token included; never the system or user turns, nor the template's role headers
(which the generation prompt gives at inference). The mask comes from the template itself:

  - from `{% generation %} ... {% endgeneration %}` blocks, where a Hugging Face template
    marks the assistant's text that way (as transformers' `return_assistant_tokens_mask`);
  - else by rendering prefixes: assistant turn i covers what the conversation up to and
    including turn i adds after the conversation up to turn i with the generation prompt
    (for text, without the whitespace that ends it: the line break after `<|im_end|>`).
    A template that does not render conversations as prefixes of each other is an error.

Hugging Face templates render text; its tokens are those of the whole rendered string, and
a token is an assistant token when its first character lies in an assistant span.
"""

import re
from typing import Any, Sequence

import numpy as np

from lm.data.tokenizer import GENERATION_END, GENERATION_START

ROLES = ("system", "user", "assistant")


def messages_of(record: dict, fields: Sequence[str]) -> list[dict]:
  """The conversation of a record, in the format `fields` names ("messages", or "prompt"
  and "completion"); ValueError names the field that is wrong."""
  if "messages" in fields:
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
      raise ValueError(f"field 'messages' must be a non-empty list of {{'role', 'content'}}, "
                       f"got {str(messages)[:200]}")
    for i, message in enumerate(messages):
      if (not isinstance(message, dict) or message.get("role") not in ROLES
          or not isinstance(message.get("content"), str)):
        raise ValueError(f"field 'messages', item {i}: must be {{'role': one of {ROLES}, "
                         f"'content': str}}, got {str(message)[:200]}")
    if not any(m["role"] == "assistant" for m in messages):
      raise ValueError("field 'messages' has no assistant turn: there is nothing to train on")
    return [{"role": m["role"], "content": m["content"]} for m in messages]
  if "prompt" in fields and "completion" in fields:
    for field in ("prompt", "completion"):
      if not isinstance(record[field], str):
        raise ValueError(f"field {field!r} must be a string, got {str(record[field])[:200]}")
    return [{"role": "user", "content": record["prompt"]},
            {"role": "assistant", "content": record["completion"]}]
  raise ValueError(f"data.fields={','.join(fields)!r}: the SFT formats are 'messages' (chat) "
                   "and 'prompt,completion'")


def render_with_mask(tokenizer: Any, messages: list[dict]) -> tuple[np.ndarray, np.ndarray]:
  """(token ids [N], assistant mask [N]) of the conversation under the tokenizer's template."""
  if re.search(r"{%-?\s*generation\s*-?%}", getattr(tokenizer, "chat_template", None) or ""):
    text, spans = _generation_spans(tokenizer, messages)
  else:
    full = tokenizer.render_chat(messages)
    spans = _prefix_spans(tokenizer, messages, full)
    if not isinstance(full, str):  # token ids already: the spans are token positions
      ids = np.asarray(full, np.int32)
      mask = np.zeros(len(ids), bool)
      for start, end in spans:
        mask[start:end] = True
      return ids, mask
    text = full
  ids, offsets = tokenizer.encode_with_offsets(text)
  starts = np.array([start for start, _ in offsets], np.int64)
  mask = np.zeros(len(ids), bool)
  for start, end in spans:
    mask |= (starts >= start) & (starts < end)
  return np.asarray(ids, np.int32), mask


def _prefix_spans(tokenizer: Any, messages: list[dict], full) -> list[tuple[int, int]]:
  """[start, end) of each assistant turn in `full` (characters of text, or token positions),
  from renderings of the conversation's prefixes."""
  spans = []
  for i, message in enumerate(messages):
    if message["role"] != "assistant":
      continue
    before = tokenizer.render_chat(messages[:i], add_generation_prompt=True)
    through = tokenizer.render_chat(messages[:i + 1])
    if not (_starts_with(through, before) and _starts_with(full, through)):
      raise ValueError("the chat template does not render a conversation as an extension of "
                       "its beginning (turn %d), so the assistant's tokens cannot be found by "
                       "rendering prefixes; mark them with {%% generation %%} blocks" % i)
    end = len(through)
    if isinstance(through, str):  # the line break after an end-of-turn marker is layout
      end = max(len(through.rstrip()), len(before))
    spans.append((len(before), end))
  return spans


def _starts_with(sequence, prefix) -> bool:
  if isinstance(sequence, str):
    return sequence.startswith(prefix)
  return len(sequence) >= len(prefix) and list(sequence[:len(prefix)]) == list(prefix)


def _generation_spans(tokenizer: Any, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
  """The rendered text and the [start, end) of each {% generation %} block in it."""
  for message in messages:
    if GENERATION_START in message["content"] or GENERATION_END in message["content"]:
      raise ValueError("a message contains the private-use characters U+E000 / U+E001, which "
                       "mark the template's generation blocks")
  marked = tokenizer.render_chat(messages, mark_generation=True)
  text, spans, start = [], [], None
  length = 0
  for char in marked:
    if char == GENERATION_START:
      start = length
    elif char == GENERATION_END:
      spans.append((start, length))
    else:
      text.append(char)
      length += 1
  return "".join(text), spans


# --- Preference pairs (reward model, DPO) ------------------------------------------------------
#
#   {"prompt": str | [{"role", "content"}, ...], "chosen": str, "rejected": str,
#    "margin": float (optional), "p_chosen": float in [0, 1] (optional)}
#
# A string prompt is one user turn; a message list is the conversation so far (it may end with
# a user turn or start with a system message). chosen and rejected are the assistant's next
# reply. `margin` asks the reward model for r_chosen - r_rejected >= margin; `p_chosen` is a soft
# label, the probability that chosen is preferred (1.0 when absent).

PREFERENCE_FIELDS = ("prompt", "chosen", "rejected")


def preference_of(record: dict) -> tuple[list[dict], str, str, float, float]:
  """(prompt messages, chosen, rejected, margin, p_chosen) of a preference record; ValueError
  names the field that is wrong."""
  prompt = record.get("prompt")
  if isinstance(prompt, str):
    messages = [{"role": "user", "content": prompt}]
  elif isinstance(prompt, list) and prompt:
    for i, message in enumerate(prompt):
      if (not isinstance(message, dict) or message.get("role") not in ROLES
          or not isinstance(message.get("content"), str)):
        raise ValueError(f"field 'prompt', item {i}: must be {{'role': one of {ROLES}, "
                         f"'content': str}}, got {str(message)[:200]}")
    messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
  else:
    raise ValueError(f"field 'prompt' must be a string or a non-empty list of messages, got "
                     f"{str(prompt)[:200]}")
  for field in ("chosen", "rejected"):
    if not isinstance(record.get(field), str) or not record[field]:
      raise ValueError(f"field {field!r} must be a non-empty string (the assistant's reply), "
                       f"got {str(record.get(field))[:200]}")
  numbers = {}
  for field, default in (("margin", 0.0), ("p_chosen", 1.0)):
    value = record.get(field, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
      raise ValueError(f"field {field!r} must be a number, got {value!r}")
    numbers[field] = float(value)
  if not 0.0 <= numbers["p_chosen"] <= 1.0:
    raise ValueError(f"field 'p_chosen' must be in [0, 1], got {numbers['p_chosen']}")
  return messages, record["chosen"], record["rejected"], numbers["margin"], numbers["p_chosen"]


READ_AT = ("end_of_turn", "reply_end")


def read_position(mask: np.ndarray, read_at: str = "end_of_turn") -> int:
  """Where a reward head reads a reply rendered by `render_reply`: its last token, the
  end-of-turn token ("end_of_turn"), or the token before it, the reply's own last token
  ("reply_end"; an empty reply has none: its end-of-turn token)."""
  if read_at not in READ_AT:
    raise ValueError(f"reward.read_at={read_at!r} is not one of {list(READ_AT)}")
  last = len(mask) - 1 - int(np.argmax(mask[::-1]))
  if read_at == "reply_end" and last > 0 and mask[last - 1]:
    return last - 1
  return last


def render_reply(tokenizer: Any, messages: list[dict], reply: str
                 ) -> tuple[np.ndarray, np.ndarray]:
  """(ids [N], mask [N]) of the conversation `messages` + the assistant's `reply`; the mask
  covers that reply alone (with its end-of-turn token), not earlier assistant turns."""
  ids, mask = render_with_mask(tokenizer, messages + [{"role": "assistant", "content": reply}])
  if not mask.any():
    return ids, mask
  last = len(mask) - 1 - int(np.argmax(mask[::-1]))       # the reply's last token
  first = last
  while first > 0 and mask[first - 1]:
    first -= 1
  only = np.zeros_like(mask)
  only[first:last + 1] = True
  return ids, only
