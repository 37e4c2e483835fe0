"""Tests for lm/data/tasks.py: determinism, disjoint splits, answers checked independently."""

import fractions
import re

import pytest

from lm.data import tasks


@pytest.fixture(scope="module")
def train():
  return tasks.records("train", seed=0)


@pytest.fixture(scope="module")
def held_out():
  return tasks.records("eval", seed=0)


def _question(record):
  return record["messages"][0]["content"]


def test_same_seed_same_records_other_seed_other_train_records(train):
  assert tasks.records("train", seed=0) == train
  other = tasks.records("train", seed=1)
  assert len(other) == len(train)
  assert [_question(r) for r in other] != [_question(r) for r in train]


def test_sizes_and_task_selection(train, held_out):
  assert len(train) == tasks.TRAIN_PER_TASK * len(tasks.TASK_NAMES)
  assert len(held_out) == tasks.EVAL_PER_TASK * len(tasks.TASK_NAMES)
  assert {r["task"] for r in held_out} == set(tasks.TASK_NAMES)
  some = tasks.records("eval", tasks=["sort", "add"])
  assert [r["task"] for r in some] == ["sort"] * tasks.EVAL_PER_TASK + ["add"] * tasks.EVAL_PER_TASK
  with pytest.raises(ValueError, match="unknown built-in task 'nope'"):
    tasks.records("eval", tasks=["nope"])
  with pytest.raises(ValueError, match="split='test'"):
    tasks.records("test")


def test_held_out_questions_never_occur_in_training(train, held_out):
  held = {(r["task"], _question(r)) for r in held_out}
  assert len(held) == len(held_out)  # distinct
  for seed in (0, 1, 2):  # whatever seed drew the training set
    trained = {(r["task"], _question(r)) for r in tasks.records("train", seed=seed)}
    assert not held & trained
  # Another seed's held-out items are held out too (the split does not depend on the seed).
  assert not {(r["task"], _question(r)) for r in tasks.records("eval", seed=5)} & trained


def test_records_are_chat_records_that_fit_a_byte_context(train, held_out):
  for r in train + held_out:
    assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
    assert r["messages"][1]["content"] == r["answer"]
    # bos, two role tokens and two end-of-turn tokens around the text.
    assert len((_question(r) + r["answer"]).encode()) + 5 <= 100


def _expected(task: str, question: str) -> str:
  """Each task's answer, computed from the question text alone."""
  if task == "add":
    a, b = re.fullmatch(r"Add: (\d+)\+(\d+)", question).groups()
    return str(int(a) + int(b))
  if task == "reverse":
    return " ".join(question.removeprefix("Reverse: ").split()[::-1])
  if task == "sort":
    return " ".join(sorted(question.removeprefix("Sort: ").split()))
  if task == "lookup":
    context, key = re.fullmatch(r"(.*); (\w)\?", question).groups()
    return dict(pair.split("=") for pair in context.split())[key]
  if task == "count":
    letter, word = re.fullmatch(r"Count (\w): (\w+)", question).groups()
    return str(sum(c == letter for c in word))
  if task == "units":
    amount, source, target = re.fullmatch(r"(\d+) (\w+) in (\w+)\?", question).groups()
    f = fractions.Fraction
    to_base = {"km": 1000, "m": 1, "cm": f(1, 100), "mm": f(1, 1000), "kg": 1000, "g": 1,
               "L": 1000, "mL": 1, "kW": 1000, "W": 1}
    value = f(int(amount)) * to_base[source] / to_base[target]
    assert value.denominator == 1
    return str(value.numerator)
  raise AssertionError(task)


def test_answers_match_an_independent_computation(train, held_out):
  for r in train[::7] + held_out:
    assert r["answer"] == _expected(r["task"], _question(r)), r


def test_a_larger_held_out_set_extends_the_default_one(held_out):
  big = tasks.records("eval", seed=0, tasks=["add", "lookup"], eval_per_task=400)
  assert [r["task"] for r in big] == ["add"] * 400 + ["lookup"] * 400
  default = {t: [r for r in held_out if r["task"] == t] for t in ("add", "lookup")}
  assert big[:tasks.EVAL_PER_TASK] == default["add"]
  assert big[400:400 + tasks.EVAL_PER_TASK] == default["lookup"]
  questions = [_question(r) for r in big]
  assert len(set(questions)) == len(questions)
  assert all(tasks.is_held_out(r["task"], _question(r)) for r in big)
  # add: 90 x 90 questions, about one in EVAL_FRACTION held out; asking for more is an error.
  with pytest.raises(ValueError, match="eval_per_task=2000: task 'add' has fewer distinct"):
    tasks.records("eval", tasks=["add"], eval_per_task=2000)
