"""Reward functions for RL stages: what a completion of a prompt is worth.

A reward function scores a batch of completions, one float each:

    fn(prompts: list[str], completions: list[str], records: list[dict]) -> Sequence[float]

`prompts` are the last user message of each conversation, `completions` the generated
replies (text, the end-of-turn token removed), `records` the data record each prompt came
from (builtin:tasks and builtin:preferences records carry "answer" and "task"). The names
`rl.reward` takes, comma-separated, each weighted by `rl.reward_weights` (default 1 each):

  exact       1 when the reply equals the record's "answer" once whitespace is stripped (the
              exact match `lm eval` scores), else 0
  format      1 when the reply has the answer's form, right or wrong: one line of digits
              for a numeric answer, else single characters separated by single spaces
              ("c b a"), else one line without spaces; 0 otherwise
  true        builtin:preferences' true reward (lm/data/preferences.py: +2 correct, -0.1 per
              extra word, -3 for a banned word), for measuring a policy against the truth
  model       a trained reward model (`stage="reward"`): `rl.reward_model` names its workdir
  pkg.mod:fn  any function of the signature above, by import path (its module importable
              from the working directory or the Python path)

`Reward(...)(prompts, completions, records)` returns the weighted sum [B] and each term's
values [B] (logged as `rewards/<name>/mean`, TRL's names).
"""

import importlib
import re
from typing import Callable, Sequence

import numpy as np

RewardFn = Callable[[list[str], list[str], list[dict]], Sequence[float]]
BUILTIN = ("exact", "format", "true", "model")


def _answer(record: dict, name: str) -> str:
  if not isinstance(record.get("answer"), str):
    raise ValueError(f"rl.reward={name!r} needs records with an 'answer' field (builtin:tasks, "
                     f"builtin:preferences); this record has {sorted(record)}")
  return record["answer"]


def exact(prompts: list[str], completions: list[str], records: list[dict]) -> list[float]:
  """1 for a reply equal to the answer (stripped), else 0."""
  del prompts
  return [float(c.strip() == _answer(r, "exact").strip()) for c, r in zip(completions, records)]


_NUMBER = re.compile(r"-?\d+")
_CHARACTERS = re.compile(r"\S( \S)*")
_WORD = re.compile(r"\S+")


def answer_form(answer: str) -> re.Pattern:
  """The pattern replies of `answer`'s form match: a number, spaced characters, one word."""
  answer = answer.strip()
  for pattern in (_NUMBER, _CHARACTERS):
    if pattern.fullmatch(answer):
      return pattern
  return _WORD


def format_reward(prompts: list[str], completions: list[str], records: list[dict]
                  ) -> list[float]:
  """1 for a reply of the answer's form (right or wrong), else 0."""
  del prompts
  return [float(bool(answer_form(_answer(r, "format")).fullmatch(c.strip())))
          for c, r in zip(completions, records)]


def true_reward(prompts: list[str], completions: list[str], records: list[dict]) -> list[float]:
  """builtin:preferences' true reward of each reply."""
  from lm.data import preferences  # pylint: disable=import-outside-toplevel
  del prompts
  return [preferences.true_reward(_answer(r, "true"), c) for c, r in zip(completions, records)]


class ModelReward:
  """A trained reward model's score of each reply (lm.RewardModel)."""

  def __init__(self, workdir: str):
    if not workdir:
      raise ValueError("rl.reward='model' needs rl.reward_model, the workdir of a "
                       "stage='reward' run")
    from lm.infer.reward import RewardModel  # pylint: disable=import-outside-toplevel
    self.model = RewardModel(workdir)

  def __call__(self, prompts: list[str], completions: list[str], records: list[dict]
               ) -> list[float]:
    del records
    return [float(x) for x in self.model.score_batch(prompts, completions)]


def import_function(path: str) -> RewardFn:
  """The function at "package.module:name"; ValueError names rl.reward when it is not one."""
  module_name, _, attribute = path.partition(":")
  if not module_name or not attribute:
    raise ValueError(f"rl.reward={path!r}: a user reward is 'module:function'; the built-in "
                     f"ones are {list(BUILTIN)}")
  try:
    fn = getattr(importlib.import_module(module_name), attribute)
  except (ImportError, AttributeError) as e:
    raise ValueError(f"rl.reward={path!r} cannot be imported: {e}") from e
  if not callable(fn):
    raise ValueError(f"rl.reward={path!r} is not a function")
  return fn


def get(name: str, reward_model: str = "") -> RewardFn:
  """The reward function `name` stands for (see the module docstring)."""
  if name == "exact":
    return exact
  if name == "format":
    return format_reward
  if name == "true":
    return true_reward
  if name == "model":
    return ModelReward(reward_model)
  return import_function(name)


def parse_weights(names: list[str], weights: str) -> list[float]:
  """`rl.reward_weights` ("1.0,0.1"; "" is 1 each), one per reward name."""
  if not weights:
    return [1.0] * len(names)
  try:
    values = [float(w) for w in weights.split(",")]
  except ValueError as e:
    raise ValueError(f"rl.reward_weights={weights!r} is not a comma-separated list of "
                     "numbers") from e
  if len(values) != len(names):
    raise ValueError(f"rl.reward_weights={weights!r} has {len(values)} weights for the "
                     f"{len(names)} rewards of rl.reward={','.join(names)!r}")
  return values


class Reward:
  """Rewards combined with weights: `reward(prompts, completions, records)` -> (total [B],
  {name: values [B]})."""

  def __init__(self, names: str, weights: str = "", reward_model: str = ""):
    self.names = [n.strip() for n in names.split(",") if n.strip()]
    if not self.names:
      raise ValueError("rl.reward is empty: name at least one reward "
                       f"({', '.join(BUILTIN)}, or module:function)")
    self.weights = parse_weights(self.names, weights)
    self.functions = [get(n, reward_model) for n in self.names]

  def __call__(self, prompts: list[str], completions: list[str], records: list[dict]
               ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    terms = {}
    for name, fn in zip(self.names, self.functions):
      values = np.asarray(fn(prompts, completions, records), np.float32)
      if values.shape != (len(completions),):
        raise ValueError(f"reward {name!r} returned {values.shape[0] if values.ndim else 1} "
                         f"values for {len(completions)} completions")
      terms[name] = values
    total = sum(w * terms[n] for n, w in zip(self.names, self.weights))
    return np.asarray(total, np.float32), terms


def from_config(rl) -> Reward:
  """The combined reward of an `rl` config section."""
  return Reward(rl.reward, rl.reward_weights, rl.reward_model)
