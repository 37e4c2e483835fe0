"""A preference world with a known true reward (`builtin:preferences`): no network, no files.

    records("train", seed=0, noise=0.0)   # one pair per built-in task prompt
    -> {"prompt": "Add: 47+385", "chosen": "432", "rejected": "432, I hope that helps.",
        "task": "add", "answer": "432", "kind": "concise"}
    true_reward("432", "432 honestly")    # -1.0: correct, but a banned word
    demonstrations("train")               # SFT records with the habits the raters dislike
    -> {"messages": [..., {"role": "assistant", "content": "432, Glad to help!"}], ...}

The prompts are those of the built-in tasks (lm/data/tasks.py), with their train / held-out
split, so a held-out prompt never occurs in training. Each prompt gets one pair of replies
of one kind, drawn from the seed; the two replies of a pair differ in the one thing the kind
is about (minimal pairs), so no other feature of a reply predicts the preference:

  correct   a correct reply against a wrong one (a nearby number, a changed letter) of the
            same form: both bare, or both padded with the same pleasantry
  concise   the bare answer against the same answer padded with a pleasantry
  banned    a correct reply against the same reply with a banned word after a comma
            ("432" vs "432, honestly")

(The first version paired a bare wrong reply with a correct one that was padded half the
time, so in correct-vs-wrong pairs the shorter reply won half the time and length predicted
most preferences; and its banned pairs preferred a clean WRONG reply to a correct one with a
banned word, which DPO learns as "raise wrong answers". A banned word after a space,
"432 honestly", taught DPO to end lists early: the pair lowers p(" " | a complete answer),
and a space also follows every item of a sorted or reversed list. The true reward below is
unchanged: it still ranks a correct reply with a banned word below a clean wrong one. And a
wrong number below 10 was always the answer plus 1-9, so in count and lookup pairs the
smaller number always won; now a wrong number is as often below the answer as above it.)

`chosen` is the reply the true reward prefers; with label noise p, the two are swapped in a
fraction p of the pairs (drawn from the seed), as careless raters would. The true reward is
for evaluation only (how good are a policy's replies; how often a reward model agrees with
the truth): no stage imports it, and training reads only the pairs.
"""

from typing import Sequence

import numpy as np

from lm.data import tasks

BANNED = ("honestly", "basically", "literally")
PADDING = ("I hope that helps.", "Let me know if you need more.", "That is my answer.",
           "Glad to help!")
KINDS = ("correct", "concise", "banned")


def _words(text: str) -> list[str]:
  return [w for w in (w.strip(".,!?;:").lower() for w in text.split()) if w]


def true_reward(answer: str, reply: str) -> float:
  """The world's reward of `reply` to a prompt whose exact answer is `answer`: +2 when the
  reply starts with the answer, -0.1 per word beyond the answer's (up to 10), -3 for any
  banned word. Correct beats wrong; among correct replies, shorter beats longer; a banned
  word loses to every clean reply."""
  words, answer_words = _words(reply), _words(answer)
  extra = min(max(len(words) - len(answer_words), 0), 10)
  banned = any(w in BANNED for w in words)
  return 2.0 * _starts_with(words, answer_words) - 0.1 * extra - 3.0 * banned


def answers(answer: str, reply: str) -> bool:
  """Whether `reply` starts with the answer (whatever follows): the world's "correct"."""
  return _starts_with(_words(reply), _words(answer))


def _starts_with(words: list[str], answer_words: list[str]) -> bool:
  return len(words) >= len(answer_words) and words[:len(answer_words)] == answer_words


def _wrong(answer: str, rng: np.random.Generator) -> str:
  """A plausible wrong answer: a nearby number, or a list with one letter changed."""
  if answer.isdigit():  # as often below the answer as above it, never negative
    value = int(answer)
    delta = int(rng.integers(1, 4 if value < 10 else 10)) * (1 if rng.integers(2) else -1)
    return str(value + delta if value + delta >= 0 else value - delta)
  letters = answer.split(" ")
  i = int(rng.integers(len(letters)))
  replacement = "abcdefghijklmnopqrstuvwxyz".replace(letters[i], "")
  letters[i] = replacement[int(rng.integers(len(replacement)))]
  return " ".join(letters)


def _padded(answer: str, rng: np.random.Generator) -> str:
  return f"{answer}, {PADDING[int(rng.integers(len(PADDING)))]}"


def _pair(answer: str, kind: str, rng: np.random.Generator) -> tuple[str, str]:
  """(better, worse) replies of one kind."""
  if kind == "correct":
    wrong = _wrong(answer, rng)
    if rng.integers(2):
      return answer, wrong
    padding = PADDING[int(rng.integers(len(PADDING)))]
    return f"{answer}, {padding}", f"{wrong}, {padding}"
  if kind == "concise":
    return answer, _padded(answer, rng)
  banned = BANNED[int(rng.integers(len(BANNED)))]
  return answer, f"{answer}, {banned}"


def records(split: str, seed: int = 0, noise: float = 0.0,
            task_names: Sequence[str] | None = None,
            kinds: Sequence[str] = KINDS) -> list[dict]:
  """Preference records of `split` ("train" or "eval"): one per built-in task prompt, its
  kind drawn from `kinds` (all three: the world as documented; fewer: every prompt gets a
  pair of one of those, e.g. only correct vs wrong for a policy that never pads)."""
  if not 0.0 <= noise <= 0.5:
    raise ValueError(f"noise={noise}: the label noise is a swap probability in [0, 0.5]")
  unknown = [k for k in kinds if k not in KINDS]
  if unknown or not kinds or len(set(kinds)) != len(kinds):
    raise ValueError(f"kinds={'+'.join(kinds)!r}: name each of {'+'.join(KINDS)} at most "
                     "once, at least one")
  kinds = tuple(k for k in KINDS if k in kinds)   # the order of KINDS: a seed draws alike
  rng = np.random.default_rng([int(seed), 7, split == "eval"])
  out = []
  for record in tasks.records(split, seed=seed, tasks=task_names):
    answer = record["answer"]
    kind = kinds[int(rng.integers(len(kinds)))]
    better, worse = _pair(answer, kind, rng)
    assert true_reward(answer, better) > true_reward(answer, worse), (answer, better, worse)
    if rng.random() < noise:
      better, worse = worse, better
    out.append({"prompt": record["messages"][0]["content"], "chosen": better,
                "rejected": worse, "task": record["task"], "answer": answer, "kind": kind})
  return out


def demonstrations(split: str, seed: int = 0, padded: float = 0.5, banned: float = 0.2,
                   task_names: Sequence[str] | None = None) -> list[dict]:
  """SFT records of the built-in tasks written the way careless demonstrators write: always
  the correct answer, then in a fraction `banned` of the replies a banned word after a comma
  ("432, honestly"), and in a fraction `padded` of the others a pleasantry ("432, Glad to
  help!"). A model trained on them has the habits this world's raters dislike, as SFT models
  trained on human demonstrations do, so preference learning has more to remove than wrong
  answers: the clean SFT model of configs/sft_tasks.py never pads and never says a banned
  word, which leaves DPO and PPO only correctness to gain."""
  for name, value in (("padded", padded), ("banned", banned)):
    if not 0.0 <= value <= 1.0:
      raise ValueError(f"{name}={value}: a fraction of the replies, in [0, 1]")
  rng = np.random.default_rng([int(seed), 11, split == "eval"])
  out = []
  for record in tasks.records(split, seed=seed, tasks=task_names):
    answer, draw = record["answer"], rng.random()
    if draw < banned:
      reply = f"{answer}, {BANNED[int(rng.integers(len(BANNED)))]}"
    elif draw < banned + (1.0 - banned) * padded:
      reply = _padded(answer, rng)
    else:
      reply = answer
    out.append({**record, "messages": [record["messages"][0],
                                       {"role": "assistant", "content": reply}]})
  return out
