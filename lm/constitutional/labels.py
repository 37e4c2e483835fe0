"""RL-CAI preference labels (`lm constitutional label`): two sampled replies per prompt, the
feedback model's answer to a principle's multiple-choice comparison, turned into a soft label.

The arithmetic (pure functions, tested against hand numbers):

  p(A) = exp(l_A) / (exp(l_A) + exp(l_B))   l_k: log p(option k's tokens | comparison prompt)
  clamped to [lo, hi] after a chain of thought (the paper: 40-60%; a CoT answer is otherwise
  nearly certain, and over-confident labels hurt the preference model)
  both orders (`cai.both_orders`, on by default): the pair is also shown swapped, reply b as
  (A), and p(a better) = (p(A | a, b) + p(B | b, a)) / 2, so a feedback model that favours
  a position favours neither reply (the usual cure for LLM judges' position bias)
  p_chosen = the mean of p(a better) over the `cai.ensemble` principles drawn for the pair

A record per prompt (resumable like the critiques):

  {"id": 3, "prompt": [...], "chosen": reply a, "rejected": reply b, "p_chosen": 0.73,
   "principles": ["harm", "honesty"], "p_each": [0.81, 0.65],
   "p_orders": [[0.9, 0.72], [0.7, 0.6]]}   # with both orders: p(a better) shown as (a, b)
                                            # and as (b, a), per principle; p_each their mean

"chosen" is simply the first sample and p_chosen the probability that it is preferred: the
reward stage reads the soft label as is (lm/data/formats.py); `dpo_records` orients the
pairs for DPO. A pair whose replies are equal or empty gets "skip" (the reason) and no
label: it says nothing about which reply is better.
"""

import dataclasses
import random
from typing import Any, Sequence

from absl import logging
import numpy as np

from lm.constitutional import generation
from lm.constitutional import prompts as prompts_lib
from lm.constitutional import records as records_lib
from lm.constitutional.constitution import Constitution
from lm.infer.sampling import SamplingParams


def option_probabilities(logprobs: np.ndarray) -> np.ndarray:
  """[..., K] normalized probabilities of K options from their log-probabilities [..., K]."""
  logprobs = np.asarray(logprobs, np.float64)
  shifted = logprobs - logprobs.max(axis=-1, keepdims=True)
  weights = np.exp(shifted)
  return weights / weights.sum(axis=-1, keepdims=True)


def soft_label(logprob_a: float, logprob_b: float, clamp: tuple[float, float] | None = None
               ) -> float:
  """p(reply A is better) from the two options' log-probabilities, optionally clamped."""
  p = float(option_probabilities(np.array([logprob_a, logprob_b]))[0])
  if clamp is not None:
    lo, hi = clamp
    p = min(max(p, lo), hi)
  return p


def both_orders(p_a_first: float, p_a_second: float) -> float:
  """p(a better) from the comparison shown both ways: `p_a_first` = p(A) with a as (A),
  `p_a_second` = p(A) with b as (A), i.e. 1 - p(a better) in that order."""
  return 0.5 * (p_a_first + (1.0 - p_a_second))


def ensemble(probabilities: Sequence[float]) -> float:
  """The label of a pair judged under several principles: the mean of their p(A)."""
  if not len(probabilities):
    raise ValueError("ensemble needs at least one principle's label")
  return float(np.mean(probabilities))


@dataclasses.dataclass(frozen=True)
class Settings:
  ensemble: int = 1                 # principles per pair, drawn without replacement
  chain_of_thought: bool = False
  both_orders: bool = True          # score (a, b) and (b, a): no position bias in the label
  clamp: tuple[float, float] = (0.4, 0.6)   # applied to chain-of-thought labels
  cot_tokens: int = 64
  max_new_tokens: int = 128         # of each sampled reply
  temperature: float = 1.0
  top_p: float = 1.0
  batch_size: int = 64
  seed: int = 0

  @classmethod
  def from_config(cls, cai) -> "Settings":
    return cls(cai.ensemble, cai.chain_of_thought, cai.both_orders,
               (cai.clamp_low, cai.clamp_high),
               cai.cot_tokens, cai.max_new_tokens, cai.temperature, cai.top_p, cai.batch_size,
               cai.seed)


def _seed(seed: int, prompt_id: int, which: int) -> int:
  return int(np.random.SeedSequence([seed, prompt_id, 101, which]).generate_state(1)[0])


def pair_principles(constitution: Constitution, seed: int, prompt_id: int, count: int
                    ) -> list[str]:
  rng = random.Random(f"label/{seed}/{prompt_id}")
  count = min(count, len(constitution.principles))
  return [p.name for p in rng.sample(constitution.principles, count)]


def _comparisons(feedback: Any, conversations: list[list[dict]], settings: Settings,
                 seeds: list[int]) -> np.ndarray:
  """p(A) [N] for each comparison conversation (after a chain of thought, when on; row n's
  thought sampled with seeds[n])."""
  if settings.chain_of_thought:
    prefixed = [c + [{"role": "assistant", "content": prompts_lib.COT_PREFIX}]
                for c in conversations]
    thoughts = generation.replies(
        feedback, prefixed, settings.cot_tokens, SamplingParams(settings.temperature, 0,
                                                                settings.top_p),
        seeds, settings.batch_size,
        stop_strings=[prompts_lib.COT_ANSWER.strip()])
    conversations = [c + [{"role": "assistant", "content": f"{prompts_lib.COT_PREFIX} {t}"
                                                           f"{prompts_lib.COT_ANSWER}"}]
                     for c, t in zip(conversations, thoughts)]
  logprobs = generation.option_logprobs(feedback, conversations, prompts_lib.OPTIONS,
                                        settings.batch_size)
  clamp = settings.clamp if settings.chain_of_thought else None
  return np.array([soft_label(a, b, clamp) for a, b in logprobs])


def label_batch(policy: Any, feedback: Any, constitution: Constitution, ids: Sequence[int],
                prompts: Sequence[Sequence[dict]], settings: Settings) -> list[dict]:
  """The records of one batch of prompts: two samples each from `policy`, labelled by
  `feedback` (the same engine or another)."""
  sampling = SamplingParams(settings.temperature, 0, settings.top_p)
  samples = [generation.replies(policy, [list(p) for p in prompts], settings.max_new_tokens,
                                sampling, [_seed(settings.seed, i, which) for i in ids],
                                settings.batch_size) for which in (0, 1)]
  out, jobs = [], []
  for k, (i, prompt, a, b) in enumerate(zip(ids, prompts, *samples)):
    record = {"id": int(i), "prompt": list(prompt), "chosen": a, "rejected": b}
    if not a or not b or a == b:
      record["skip"] = "an empty reply" if not a or not b else "equal replies"
    else:
      names = pair_principles(constitution, settings.seed, i, settings.ensemble)
      record["principles"] = names
      orders = ((a, b), (b, a)) if settings.both_orders else ((a, b),)
      jobs += [(k, order, prompts_lib.comparison_messages(prompt, *shown,
                                                          constitution.principle(n)))
               for n in names for order, shown in enumerate(orders)]
    out.append(record)
  if jobs:
    p = _comparisons(feedback, [c for *_, c in jobs], settings,
                     [_seed(settings.seed, ids[k], 2 + order) for k, order, _ in jobs])
    per_order: dict[int, list[list[float]]] = {}
    for (k, order, _), value in zip(jobs, p):
      if order == 0:
        per_order.setdefault(k, []).append([float(value)])
      else:   # shown as (b, a): p(A) is p(b better)
        per_order[k][-1].append(float(value))
    for k, values in per_order.items():
      out[k]["p_each"] = [round(v[0] if len(v) == 1 else both_orders(*v), 6) for v in values]
      if settings.both_orders:
        out[k]["p_orders"] = [[round(v[0], 6), round(1.0 - v[1], 6)] for v in values]
  for record in out:
    if "p_each" in record:
      record["p_chosen"] = ensemble(record["p_each"])
  return out


def run(policy: Any, feedback: Any, constitution: Constitution, prompts: Sequence[Sequence[dict]],
        output: str, settings: Settings) -> list[dict]:
  """Writes (or completes) `output` with one record per prompt; returns its records in
  prompt order."""
  prompts = [list(p) for p in prompts]
  out = records_lib.ResumableJsonl(output, records_lib.fingerprint(
      prompts, constitution=constitution.name, settings=dataclasses.asdict(settings)))
  todo = [i for i in range(len(prompts)) if i not in out.done]
  for begin in range(0, len(todo), settings.batch_size):
    ids = todo[begin:begin + settings.batch_size]
    out.append(label_batch(policy, feedback, constitution, ids, [prompts[i] for i in ids],
                           settings))
    logging.info("label: %d / %d prompts", len(out.done), len(prompts))
  return sorted(records_lib.read(output), key=lambda r: r["id"])


def preference_records(labels: Sequence[dict]) -> list[dict]:
  """The labelled pairs as the reward stage reads them (soft label p_chosen)."""
  return [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"],
           "p_chosen": r["p_chosen"]} for r in labels if "p_chosen" in r]


def dpo_records(labels: Sequence[dict], min_confidence: float = 0.5) -> list[dict]:
  """The labelled pairs oriented for DPO (chosen: the reply the label prefers), keeping those
  whose label is at least `min_confidence` sure (DPO reads no soft label)."""
  out = []
  for r in labels:
    if "p_chosen" not in r or max(r["p_chosen"], 1 - r["p_chosen"]) < min_confidence:
      continue
    a_better = r["p_chosen"] >= 0.5
    out.append({"prompt": r["prompt"], "chosen": r["chosen"] if a_better else r["rejected"],
                "rejected": r["rejected"] if a_better else r["chosen"],
                "p_chosen": max(r["p_chosen"], 1 - r["p_chosen"])})
  return out
