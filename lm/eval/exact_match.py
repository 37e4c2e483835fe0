"""Exact match on chat records: greedy replies to each record's conversation, compared with
its answer.

A record is `{"messages": [..., {"role": "assistant", "content": answer}], "task", "answer"}`
(lm/data/tasks.py); the prompt is every message before the final assistant turn, rendered
with the tokenizer's chat template and its generation prompt, as `lm chat` renders it. A
reply is correct when it equals the answer once surrounding whitespace is stripped.
"""

from typing import Any, Sequence

from lm.infer import chat as chat_lib
from lm.infer.sampling import GREEDY

EXAMPLES = 3  # replies kept per task in the results, to see what the model says
SLACK_TOKENS = 16  # generated beyond the longest answer, so a long wrong reply shows as such


def prompt_messages(record: dict) -> list[dict]:
  """The conversation a record's answer replies to (its final assistant turn removed)."""
  messages = list(record["messages"])
  if messages and messages[-1]["role"] == "assistant":
    messages.pop()
  return messages


def replies(engine: Any, records: Sequence[dict], batch_size: int = 64,
            max_new_tokens: int | None = None) -> list[str]:
  """The engine's greedy reply to each record, decoded `batch_size` records at a time, each
  at most `max_new_tokens` long (default: the longest answer's tokens + SLACK_TOKENS)."""
  tokenizer = engine.tokenizer
  prompts = [chat_lib.render(tokenizer, prompt_messages(r)) for r in records]
  if max_new_tokens is None:
    max_new_tokens = max(len(tokenizer.encode(r["answer"])) for r in records) + SLACK_TOKENS
  longest_prompt = max(map(len, prompts))
  max_new = min(max_new_tokens, engine.config.max_seq_len - longest_prompt)
  if max_new < 1:
    raise ValueError(f"a prompt of {longest_prompt} tokens leaves no room to reply within "
                     f"model.max_seq_len={engine.config.max_seq_len}")
  stops = chat_lib.stop_token_ids(tokenizer)
  out = []
  for begin in range(0, len(prompts), batch_size):
    completions = engine.generate(prompts[begin:begin + batch_size], max_new_tokens=max_new,
                                  sampling=GREEDY, stop_token_ids=stops)
    out += [c.text for c in completions]
  return out


def is_correct(reply: str, answer: str) -> bool:
  return reply.strip() == answer.strip()


def score(records: Sequence[dict], replies_: Sequence[str]) -> dict[str, dict]:
  """Per task: {"accuracy", "correct", "total", "examples"}; records keep their task order."""
  results: dict[str, dict] = {}
  for record, reply in zip(records, replies_, strict=True):
    task = results.setdefault(record["task"], {"accuracy": 0.0, "correct": 0, "total": 0,
                                               "examples": []})
    correct = is_correct(reply, record["answer"])
    task["correct"] += correct
    task["total"] += 1
    if len(task["examples"]) < EXAMPLES:
      task["examples"].append({"prompt": prompt_messages(record)[-1]["content"],
                               "answer": record["answer"], "reply": reply, "correct": correct})
  for task in results.values():
    task["accuracy"] = task["correct"] / task["total"]
  return results
