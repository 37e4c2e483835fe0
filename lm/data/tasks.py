"""Built-in instruction tasks with exact answers (`builtin:tasks`): no network, no files.

    records("train", seed=0)          # thousands of chat records per task
    records("eval")                   # the held-out items: a fixed few hundred in all
    -> {"messages": [{"role": "user", "content": "Add: 47+385"},
                     {"role": "assistant", "content": "432"}], "task": "add", "answer": "432"}

Each task draws its items from a numpy generator seeded by (seed, task, split), so a seed
fixes every record. Which split an item belongs to is decided by a hash of its question
alone (one item in `EVAL_FRACTION`), never by the seed: a held-out question cannot occur in
any training set, whatever seeds the two were drawn with.

Items are short so that a whole rendered conversation fits a byte-level model's 128-token
context with room to spare (question + answer under 40 bytes; the byte template adds five
tokens), and simple enough for a model of a few million parameters to learn in minutes.
"""

import hashlib
from typing import Callable, Sequence

import numpy as np

TRAIN_PER_TASK = 5000
EVAL_PER_TASK = 50
EVAL_FRACTION = 8  # one question in this many is held out
_MAX_MISSES = 100_000  # draws in a row without a new held-out item: the split is exhausted

_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))
# (from, to, factor): "3 km in m?" -> "3000"; the inverse direction divides exactly. Powers
# of ten only: the answer is the amount with zeros appended or removed.
_UNITS = (("km", "m", 1000), ("m", "cm", 100), ("cm", "mm", 10), ("kg", "g", 1000),
          ("L", "mL", 1000), ("kW", "W", 1000))

Item = tuple[str, str]  # (question, answer)


def _add(rng: np.random.Generator) -> Item:
  a, b = (int(n) for n in rng.integers(10, 100, size=2))  # two 2-digit numbers
  return f"Add: {a}+{b}", str(a + b)


def _reverse(rng: np.random.Generator) -> Item:
  items = list(rng.choice(_LETTERS, size=int(rng.integers(3, 5))))  # 3 or 4 letters
  return f"Reverse: {' '.join(items)}", " ".join(reversed(items))


def _sort(rng: np.random.Generator) -> Item:
  items = [str(d) for d in rng.integers(0, 10, size=int(rng.integers(3, 6)))]  # 3-5 digits
  return f"Sort: {' '.join(items)}", " ".join(sorted(items))


def _lookup(rng: np.random.Generator) -> Item:
  keys = list(rng.choice(_LETTERS, size=int(rng.integers(2, 4)), replace=False))  # 2 or 3
  values = [int(v) for v in rng.integers(0, 10, size=len(keys))]
  key = keys[int(rng.integers(len(keys)))]
  context = " ".join(f"{k}={v}" for k, v in zip(keys, values))
  return f"{context}; {key}?", str(values[keys.index(key)])


def _count(rng: np.random.Generator) -> Item:
  word = "".join(rng.choice(_LETTERS[:4], size=int(rng.integers(5, 11))))  # over "abcd"
  letter = str(_LETTERS[int(rng.integers(4))])
  return f"Count {letter}: {word}", str(word.count(letter))


def _units(rng: np.random.Generator) -> Item:
  small, large, factor = _UNITS[int(rng.integers(len(_UNITS)))]
  amount = int(rng.integers(1, 100))
  if rng.integers(2):  # the inverse direction: "3000 m in km?" -> "3"
    return f"{amount * factor} {large} in {small}?", str(amount)
  return f"{amount} {small} in {large}?", str(amount * factor)


_TASKS: dict[str, Callable[[np.random.Generator], Item]] = {
    "add": _add, "reverse": _reverse, "sort": _sort, "lookup": _lookup, "count": _count,
    "units": _units}
TASK_NAMES: tuple[str, ...] = tuple(_TASKS)


def draw(task: str, rng: np.random.Generator) -> Item:
  """One (question, answer) of `task` from `rng`, of either split (`is_held_out` tells which):
  for worlds built on the tasks (lm/constitutional/world.py)."""
  return _TASKS[check_tasks([task])[0]](rng)


def is_held_out(task: str, question: str) -> bool:
  """Whether a question belongs to the held-out split: a hash of the question, not the seed."""
  digest = hashlib.sha256(f"{task}\0{question}".encode()).digest()
  return int.from_bytes(digest[:8], "little") % EVAL_FRACTION == 0


def _task_seed(seed: int, task: str, split: str) -> np.random.Generator:
  salt = int.from_bytes(hashlib.sha256(f"{task}/{split}".encode()).digest()[:4], "little")
  return np.random.default_rng([int(seed), salt])


def check_tasks(tasks: Sequence[str] | None) -> tuple[str, ...]:
  """The task names, validated (None: every task); ValueError names the unknown one."""
  if tasks is None:
    return TASK_NAMES
  tasks = tuple(tasks)
  for name in tasks:
    if name not in _TASKS:
      raise ValueError(f"unknown built-in task {name!r}; the tasks are {', '.join(TASK_NAMES)}")
  if not tasks:
    raise ValueError(f"no tasks given; the tasks are {', '.join(TASK_NAMES)}")
  return tasks


def records(split: str, seed: int = 0, tasks: Sequence[str] | None = None,
            eval_per_task: int = EVAL_PER_TASK) -> list[dict]:
  """Chat records of `split` ("train" or "eval"), task by task in the order given.

  train: TRAIN_PER_TASK draws per task (a small task may repeat items); eval: `eval_per_task`
  distinct held-out items per task. A larger `eval_per_task` extends the default set (its
  first EVAL_PER_TASK items per task are the default ones), for measurements that must tell
  a few points apart; add has about a thousand held-out questions in all.
  """
  if split not in ("train", "eval"):
    raise ValueError(f"split={split!r}: the built-in tasks have splits 'train' and 'eval'")
  if eval_per_task < 1:
    raise ValueError(f"eval_per_task={eval_per_task} must be at least 1")
  held_out = split == "eval"
  count = eval_per_task if held_out else TRAIN_PER_TASK
  out = []
  for name in check_tasks(tasks):
    rng, make = _task_seed(seed, name, split), _TASKS[name]
    seen: set[str] = set()
    added = misses = 0
    while added < count:
      question, answer = make(rng)
      if is_held_out(name, question) != held_out or (held_out and question in seen):
        misses += 1
        if misses > _MAX_MISSES:  # the held-out split of this task has fewer distinct items
          raise ValueError(f"eval_per_task={eval_per_task}: task {name!r} has fewer distinct "
                           f"held-out questions ({added} found)")
        continue
      misses = 0
      seen.add(question)
      added += 1
      out.append({"messages": [{"role": "user", "content": question},
                               {"role": "assistant", "content": answer}],
                  "task": name, "answer": answer})
  return out
