"""Multiple-choice log-likelihood: score each option as the assistant's reply and pick the
most likely.

An item is a conversation, its options (strings) and the index of the right one. An option's
tokens are what the chat template puts after the generation prompt when the option is the
assistant's turn, end-of-turn token included, so "12" and "123" are told apart. The built-in
items come from the held-out task records: the right answer against near misses of it (a
number off by one or by ten, the same list in another order), so an item asks for the exact
answer, not its kind; where there are too few near misses, answers of other held-out items
of the same task fill in.
"""

import itertools
from typing import Any, Sequence

import numpy as np

from lm.infer import chat as chat_lib


def near_misses(answer: str) -> list[str]:
  """Wrong answers close to `answer`: neighbouring numbers, or its items in other orders."""
  if answer.isdigit():
    n = int(answer)
    candidates = [n + 1, n - 1, n + 10, n - 10, n * 10, n // 10 if n >= 10 else n + 2]
    return list(dict.fromkeys(str(c) for c in candidates if c >= 0 and str(c) != answer))
  items = answer.split(" ")
  orders = {" ".join(p) for p in itertools.permutations(items)} if len(items) > 1 else set()
  return sorted(orders - {answer})


def items_from_records(records: Sequence[dict], num_options: int = 4, seed: int = 0
                       ) -> list[dict]:
  """One item per record: {"messages", "options", "label", "task"}; distractors drawn (and the
  options shuffled) from `seed`."""
  answers: dict[str, list[str]] = {}
  for r in records:
    if r["answer"] not in answers.setdefault(r["task"], []):
      answers[r["task"]].append(r["answer"])
  rng = np.random.default_rng(seed)
  items = []
  for r in records:
    near = near_misses(r["answer"])
    picked = [near[i] for i in rng.permutation(len(near))[:num_options - 1]]
    others = [a for a in answers[r["task"]] if a != r["answer"] and a not in picked]
    missing = num_options - 1 - len(picked)
    if len(others) < missing:
      raise ValueError(f"task {r['task']!r}: too few distinct answers for items of "
                       f"{num_options} options")
    picked += [others[i] for i in rng.choice(len(others), missing, replace=False)]
    options = [r["answer"]] + picked
    order = rng.permutation(num_options)
    items.append({"messages": list(r["messages"][:-1]),
                  "options": [options[i] for i in order],
                  "label": int(np.argmax(order == 0)), "task": r["task"]})
  return items


def _ids(tokenizer: Any, messages: list[dict], add_generation_prompt: bool) -> list[int]:
  rendered = tokenizer.render_chat(messages, add_generation_prompt=add_generation_prompt)
  ids = tokenizer.encode(rendered) if isinstance(rendered, str) else rendered
  return [int(t) for t in ids]


def option_tokens(tokenizer: Any, messages: list[dict], option: str) -> tuple[list[int],
                                                                              list[int]]:
  """(prompt, continuation): the conversation with the generation prompt, and the tokens the
  template adds for `option` as the assistant's turn. Falls back to the option's text tokens
  when the full rendering does not extend the prompt's tokens."""
  prompt = chat_lib.render(tokenizer, messages)
  full = _ids(tokenizer, list(messages) + [{"role": "assistant", "content": option}], False)
  if len(full) > len(prompt) and full[:len(prompt)] == prompt:
    return prompt, full[len(prompt):]
  return prompt, [int(t) for t in tokenizer.encode(option)]


def option_logprobs(engine: Any, items: Sequence[dict], batch_size: int = 64) -> list[list[float]]:
  """Per item, each option's summed log-probability as the reply (Engine.score)."""
  prompts, continuations, owners = [], [], []
  for i, item in enumerate(items):
    for option in item["options"]:
      prompt, continuation = option_tokens(engine.tokenizer, item["messages"], option)
      prompts.append(prompt)
      continuations.append(continuation)
      owners.append(i)
  scores = engine.score(prompts, continuations, batch_size=batch_size)
  out: list[list[float]] = [[] for _ in items]
  for owner, logprobs in zip(owners, scores):
    out[owner].append(float(np.sum(logprobs, dtype=np.float64)))
  return out


def score(items: Sequence[dict], logprobs: Sequence[Sequence[float]]) -> dict[str, dict]:
  """Per task: {"accuracy", "correct", "total"}: an item is right when its label's option has
  the highest log-probability (the first such option on a tie)."""
  results: dict[str, dict] = {}
  for item, option_scores in zip(items, logprobs, strict=True):
    task = results.setdefault(item["task"], {"accuracy": 0.0, "correct": 0, "total": 0})
    task["correct"] += int(np.argmax(option_scores)) == item["label"]
    task["total"] += 1
  for task in results.values():
    task["accuracy"] = task["correct"] / task["total"]
  return results
