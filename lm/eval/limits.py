"""`lm eval --limits=...`: measurements of two limits every user of a model meets.

lost_in_the_middle   Synthetic key-value retrieval (Liu et al., "Lost in the Middle", 2023):
                     a context of `pairs` random key -> value lines, one question about
                     the key at a chosen position; accuracy by position and context length.
knowledge            Questions whose answers are (a) common knowledge, in the model's
                     training data, (b) only in provided documents (made-up facts), (c)
                     nowhere (made-up entities); answered without and with retrieval
                     (lm/infer/retrieval.py); per set the rate of correct answers, of
                     abstentions ("I don't know") and of confident wrong answers.

Greedy replies through the model's chat template, as `lm chat` renders them; a reply is
correct when it contains the answer (case-insensitive).
"""

import os
import re
import tempfile
import time
from typing import Any, Sequence

import numpy as np

from lm.infer import chat as chat_lib
from lm.infer import retrieval
from lm.infer.sampling import GREEDY

TASKS = ("lost_in_the_middle", "knowledge")
_ABSTAIN = re.compile(r"\b(don't know|do not know|not sure|cannot|can't|unknown|no information|"
                      r"not (?:mentioned|provided|available|given)|unable)\b", re.I)


def _replies(chat: chat_lib.Chat, requests: Sequence[chat_lib.ChatRequest],
             batch_size: int) -> list[str]:
  prompts = [chat.prompt(r) for r in requests]
  out = []
  for begin in range(0, len(prompts), batch_size):
    rows = slice(begin, begin + batch_size)
    completions = chat.engine.generate(
        prompts[rows], max_new_tokens=[r.max_tokens for r in requests[rows]], sampling=GREEDY,
        stop_token_ids=chat.stop_ids)
    out += [c.text for c in completions]
  return out


def _request(question: str, max_tokens: int, retrieval_k: int = 0) -> chat_lib.ChatRequest:
  return chat_lib.ChatRequest(messages=[{"role": "user", "content": question}],
                              max_tokens=max_tokens, sampling=GREEDY, retrieval=retrieval_k)


# -- Lost in the middle -------------------------------------------------------------------------

def _kv_context(pairs: int, rng: np.random.Generator) -> tuple[list[str], list[str], str]:
  """(keys, values, the user turn's opening): `pairs` lines "key: value" of distinct random
  6-hex-digit keys and random 6-hex-digit values."""
  keys = [f"{k:06x}" for k in rng.choice(1 << 24, pairs, replace=False)]
  values = [f"{v:06x}" for v in rng.integers(0, 1 << 24, pairs)]
  lines = "\n".join(f"{k}: {v}" for k, v in zip(keys, values))
  return keys, values, f"Here are key: value pairs.\n{lines}\n"


def _kv_question(key: str) -> str:
  return f"What is the value of key {key}? Reply with the value only."


def kv_items(pairs: int, position: int, items: int, rng: np.random.Generator
             ) -> list[tuple[str, str]]:
  """(question, answer): `pairs` lines "key: value" of random 6-hex-digit strings, and a
  question about the key on line `position` (0-based)."""
  out = []
  for _ in range(items):
    keys, values, context = _kv_context(pairs, rng)
    out.append((context + _kv_question(keys[position]), values[position]))
  return out


def kv_conversation(pairs: int, questions: int, rng: np.random.Generator,
                    restate: bool = False) -> dict:
  """A training record for the lost-in-the-middle eval's format: the first user turn is an
  eval question (context + question), then `questions` - 1 more turns ask about other keys
  of the same context. Keys are asked at uniformly random lines, so training favours no
  position; several questions per context give the loss more answer tokens per (long)
  context. The answer is the value alone, or with `restate` the key's whole line ("key:
  value", which the eval accepts: the reply contains the value), so that every answer
  character is a copy of the context: writing the key first makes finding its value a
  plain copy of what follows it."""
  keys, values, context = _kv_context(pairs, rng)
  asked = rng.choice(pairs, min(questions, pairs), replace=False)
  messages = []
  for i, line in enumerate(asked):
    answer = f"{keys[line]}: {values[line]}" if restate else values[line]
    question = (context if i == 0 else "") + _kv_question(keys[line])
    messages += [{"role": "user", "content": question},
                 {"role": "assistant", "content": answer}]
  return {"messages": messages}


def lookup_items(pairs: int, position: int, items: int, rng: np.random.Generator
                 ) -> list[tuple[str, str]]:
  """(question, answer) in the built-in lookup task's format (lm/data/tasks.py: "a=3 b=5;
  b?" -> "5"), with `pairs` distinct letters (at most 26) and the asked one at `position`."""
  if not 1 <= pairs <= 26:
    raise ValueError(f"lost_in_the_middle:format=lookup: pairs={pairs} must be in 1..26 "
                     "(one letter per key)")
  out = []
  for _ in range(items):
    keys = list(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), pairs, replace=False))
    values = [str(int(v)) for v in rng.integers(0, 10, pairs)]
    context = " ".join(f"{k}={v}" for k, v in zip(keys, values))
    out.append((f"{context}; {keys[position]}?", values[position]))
  return out


FORMATS = {"kv": kv_items, "lookup": lookup_items}


def lost_in_the_middle(chat: chat_lib.Chat, lengths: Sequence[int] = (8, 16, 32),
                       positions: int = 5, items: int = 4, seed: int = 0,
                       batch_size: int = 64, style: str = "kv") -> dict:
  """Accuracy for each context length (key-value pairs) and each of `positions` evenly spaced
  answer positions (first to last). `style` "kv": the 6-hex-digit lines, correct when the
  reply contains the value; "lookup": the lookup task's format, whose answer is one digit,
  correct when the reply is that digit (chance: 10%)."""
  rng = np.random.default_rng(seed)
  results = {"lengths": list(lengths), "positions": positions, "items": items,
             "format": style, "table": {}}
  for pairs in lengths:
    at = sorted({round(i * (pairs - 1) / max(positions - 1, 1)) for i in range(positions)})
    cases = [(p, q, a) for p in at for q, a in FORMATS[style](pairs, p, items, rng)]
    # kv: room to restate the key first
    requests = [_request(q, 32 if style == "kv" else 4) for _, q, _ in cases]
    start = time.perf_counter()
    replies = _replies(chat, requests, batch_size)
    tokens = int(np.mean([len(chat.prompt(r)) for r in requests]))
    row = {}
    for position in at:
      hits = [a.lower() in reply.lower() if style == "kv" else reply.strip() == a
              for (p, _, a), reply in zip(cases, replies) if p == position]
      row[str(position)] = sum(hits) / len(hits)
    results["table"][str(pairs)] = {"prompt_tokens": tokens, "accuracy_by_position": row,
                                    "seconds": time.perf_counter() - start,
                                    "example": {"answer": cases[0][2], "reply": replies[0]}}
  return results


# -- Knowledge cutoff and hallucination ---------------------------------------------------------

KNOWN = [("What is the capital of France?", "Paris"), ("What is the capital of Japan?", "Tokyo"),
         ("What is the capital of Italy?", "Rome"), ("What is the capital of Germany?", "Berlin"),
         ("What is the capital of Spain?", "Madrid"),
         ("Which planet is the largest in the solar system?", "Jupiter"),
         ("Who wrote Romeo and Juliet?", "Shakespeare"),
         ("What color is the sky on a clear day?", "blue"),
         ("How many legs does a spider have?", "eight|8"),
         ("What is the chemical symbol for water?", "H2O")]
NAMES = ["Zorblax", "Quenta", "Tabrizel", "Okonda", "Veltrane", "Surimo", "Pallaxis", "Drovno",
         "Ilvareth", "Kestrune"]
ABSENT = ["Vexmoor", "Ulthane", "Corrabel", "Nimdara", "Faskol", "Brevitt", "Omaroon", "Teskal",
          "Ydrennis", "Galvork"]
FILLER = ("the river runs past old towns where farmers trade grain and stone while the "
          "seasons turn slowly over quiet hills and markets").split()


def write_documents(folder: str, rng: np.random.Generator) -> list[tuple[str, str]]:
  """One file per made-up river (its length inside filler); the questions about them."""
  questions = []
  for name in NAMES:
    length = str(int(rng.integers(100, 9999)))
    words = list(rng.choice(FILLER, 150))
    at = int(rng.integers(0, len(words)))
    words[at:at] = f"The {name} river is {length} kilometres long.".split()
    with open(os.path.join(folder, f"{name.lower()}.txt"), "w", encoding="utf-8") as f:
      f.write(" ".join(words))
    questions.append((f"How many kilometres long is the {name} river?", length))
  return questions


def _score(replies: Sequence[str], answers: Sequence[str | None]) -> dict:
  """Rates of correct answers, abstentions and confident wrong answers (neither). A question
  without an answer (None) is answered correctly by abstaining."""
  correct = abstain = wrong = 0
  for reply, answer in zip(replies, answers):
    abstained = bool(_ABSTAIN.search(reply))
    if answer is None:
      right = abstained
    else:
      right = bool(re.search(rf"\b(?:{answer})\b", reply, re.I))
      abstained = abstained and not right
    correct += right
    abstain += abstained
    wrong += not right and not abstained
  n = len(replies)
  return {"correct": correct / n, "abstain": abstain / n, "confident_wrong": wrong / n, "n": n,
          "examples": list(replies[:2])}


def knowledge(chat: chat_lib.Chat, seed: int = 0, retrieval_k: int = 3,
              batch_size: int = 64) -> dict:
  """The three question sets, each without and with retrieval over the made-up documents."""
  rng = np.random.default_rng(seed)
  with tempfile.TemporaryDirectory() as folder:
    in_docs = write_documents(folder, rng)
    index = retrieval.Index.from_folder(folder, size=60, overlap=15)
  sets = {"training_data": [(q, a) for q, a in KNOWN], "documents_only": in_docs,
          "nowhere": [(f"How many kilometres long is the {n} river?", None) for n in ABSENT]}
  grounded = chat_lib.Chat(chat.engine, chat.model_name, index=index)
  results = {"retrieval_k": retrieval_k, "table": {name: {} for name in sets}}
  for mode, k in (("without_retrieval", 0), ("with_retrieval", retrieval_k)):
    start = time.perf_counter()
    items = [(name, q, a) for name, pairs in sets.items() for q, a in pairs]
    replies = _replies(grounded, [_request(q, 32, k) for _, q, _ in items], batch_size)
    seconds = time.perf_counter() - start
    for name in sets:
      mine = [(reply, a) for (n, _, a), reply in zip(items, replies) if n == name]
      results["table"][name][mode] = {**_score([r for r, _ in mine], [a for _, a in mine]),
                                      "seconds_all_sets": seconds}
  return results


# Options a task takes after its name: --limits=lost_in_the_middle:pairs=4+8+16:items=40
OPTIONS = {"lost_in_the_middle": {"pairs": "lengths", "positions": "positions",
                                  "items": "items", "format": "style"},
           "knowledge": {}}


def parse_task(spec: str) -> tuple[str, dict]:
  """(task, keyword arguments) of one --limits entry "name[:option=value]..."; ValueError
  naming the entry, the option and what it takes."""
  name, *options = spec.split(":")
  if name not in TASKS:
    raise ValueError(f"--limits: {name!r} unknown; choose from {', '.join(TASKS)}")
  kwargs = {}
  for option in options:
    key, _, value = option.partition("=")
    if key not in OPTIONS[name]:
      takes = ", ".join(OPTIONS[name]) or "no options"
      raise ValueError(f"--limits={spec}: {name} takes {takes}, not {key!r}")
    if key == "format":
      if value not in FORMATS:
        raise ValueError(f"--limits={spec}: format={value!r}; choose from "
                         f"{', '.join(FORMATS)}")
      kwargs["style"] = value
      continue
    try:
      numbers = [int(v) for v in value.split("+")]
    except ValueError:
      numbers = []
    if not numbers or min(numbers) < 1 or (key != "pairs" and len(numbers) > 1):
      raise ValueError(f"--limits={spec}: {key}={value!r} must be "
                       + ("positive integers joined by + (pairs=8+16+32)" if key == "pairs"
                          else "a positive integer"))
    kwargs[OPTIONS[name][key]] = numbers if key == "pairs" else numbers[0]
  return name, kwargs


def evaluate(engine: Any, tasks: Sequence[str], seed: int = 0) -> dict:
  """The results of each task of `tasks` (entries as `parse_task` reads them)."""
  specs = dict(parse_task(spec) for spec in tasks)
  chat = chat_lib.Chat(engine)
  results = {"model": chat.model_name, "seed": seed}
  if "lost_in_the_middle" in specs:
    results["lost_in_the_middle"] = lost_in_the_middle(chat, seed=seed,
                                                       **specs["lost_in_the_middle"])
  if "knowledge" in specs:
    results["knowledge"] = knowledge(chat, seed=seed)
  return results


def format_tables(results: dict) -> str:
  """Markdown tables of the results (as experiments/limits/README.md shows them)."""
  lines = []
  if "lost_in_the_middle" in results:
    r = results["lost_in_the_middle"]
    lines += ["| pairs | prompt tokens | accuracy by answer position (first ... last) |",
              "|---|---|---|"]
    for pairs, row in r["table"].items():
      cells = " ".join(f"{p}:{acc:.0%}" for p, acc in row["accuracy_by_position"].items())
      lines.append(f"| {pairs} | {row['prompt_tokens']} | {cells} |")
    lines.append("")
  if "knowledge" in results:
    lines += ["| questions | retrieval | correct | abstain | confident wrong |",
              "|---|---|---|---|---|"]
    for name, modes in results["knowledge"]["table"].items():
      for mode, s in modes.items():
        lines.append(f"| {name} | {mode.split('_')[0]} | {s['correct']:.0%} | "
                     f"{s['abstain']:.0%} | {s['confident_wrong']:.0%} |")
  return "\n".join(lines)
