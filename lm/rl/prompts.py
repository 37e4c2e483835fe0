"""Prompt batches for the RL stages: records -> left-padded prompt rows that carry their record.

Letters: B prompts, P prompt columns (`rl.max_prompt_len`), R record bytes.

A record is a conversation (`{"messages": [...]}`, builtin:tasks; the final assistant turn,
the reference answer, is removed) or a preference-style `{"prompt": str | messages}`
(builtin:preferences). The prompt is rendered with the chat template and its generation
prompt, exactly as `lm chat` and `lm eval` render it. Each row holds

  prompt  [P] int32    the prompt's tokens right-aligned, zeros before
  start   [] int32     the column of its first token
  record  [R] uint8    the record as UTF-8 JSON, zero-padded: the reward functions read it
                       (the answer, the task) on the host after the rollout

A prompt longer than P tokens is skipped (counted in `skipped`).
"""

import dataclasses
import json
from typing import Any

import numpy as np

from lm.data import formats
from lm.infer import chat as chat_lib

RECORD_BYTES = 2048


def prompt_messages(record: dict, fields: tuple[str, ...]) -> list[dict]:
  """The conversation a completion continues; ValueError names a malformed field."""
  if "messages" in fields:
    messages = record.get("messages")
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and m.get("role") in formats.ROLES
        and isinstance(m.get("content"), str) for m in messages):
      raise ValueError(f"field 'messages' must be a list of {{'role', 'content'}}, got "
                       f"{str(messages)[:200]}")
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    if messages and messages[-1]["role"] == "assistant":
      messages.pop()  # the reference answer
    if not messages:
      raise ValueError("field 'messages' holds no turn before the answer to prompt with")
    return messages
  if "prompt" in fields:
    prompt = record.get("prompt")
    if isinstance(prompt, str) and prompt:
      return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and prompt:
      return [{"role": m["role"], "content": m["content"]} for m in prompt]
    raise ValueError(f"field 'prompt' must be a non-empty string or message list, got "
                     f"{str(prompt)[:200]}")
  raise ValueError(f"data.fields={','.join(fields)!r}: the RL stages read 'messages' "
                   "(builtin:tasks) or 'prompt' (builtin:preferences)")


def decode_record(row: np.ndarray) -> dict:
  """The record a row's `record` bytes hold."""
  data = bytes(np.asarray(row, np.uint8))
  return json.loads(data.rstrip(b"\0").decode("utf-8"))


def last_user_text(record: dict, fields: tuple[str, ...]) -> str:
  """The prompt's last message text: what a reward function sees as the prompt."""
  return prompt_messages(record, fields)[-1]["content"]


@dataclasses.dataclass(frozen=True)
class PromptRow:
  """record -> one prompt row (or None: too long). Top-level: grain pickles it."""
  tokenizer: Any
  fields: tuple[str, ...]
  max_prompt_len: int

  @property
  def name(self) -> str:
    return self.tokenizer.name

  def __call__(self, record: dict) -> dict[str, np.ndarray] | None:
    ids = chat_lib.render(self.tokenizer, prompt_messages(record, self.fields))
    if len(ids) > self.max_prompt_len:
      return None
    encoded = json.dumps(record, ensure_ascii=False).encode("utf-8")
    if len(encoded) > RECORD_BYTES:
      raise ValueError(f"a record of {len(encoded)} bytes as JSON is longer than the "
                       f"{RECORD_BYTES} an RL prompt row carries for its reward: "
                       f"{encoded[:200]!r}...")
    prompt = np.zeros(self.max_prompt_len, np.int32)
    prompt[self.max_prompt_len - len(ids):] = ids
    record_bytes = np.zeros(RECORD_BYTES, np.uint8)
    record_bytes[:len(encoded)] = np.frombuffer(encoded, np.uint8)
    return {"prompt": prompt, "start": np.int32(self.max_prompt_len - len(ids)),
            "record": record_bytes}


def example_batch(batch_size: int, max_prompt_len: int) -> dict[str, np.ndarray]:
  """Zeros shaped like a prompt batch."""
  return {"prompt": np.ones((batch_size, max_prompt_len), np.int32),
          "start": np.zeros(batch_size, np.int32),
          "record": np.zeros((batch_size, RECORD_BYTES), np.uint8)}
