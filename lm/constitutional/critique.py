"""SL-CAI data (`lm constitutional critique`): initial replies to red-team prompts, then
`cai.revisions` rounds of (a principle at random, a critique, a revision), batched through
the engine, written as resumable JSONL; and the SFT records made from them.

A record per prompt (lm/constitutional/records.py keeps the file resumable):

  {"id": 3, "prompt": [{"role": "user", "content": ...}],
   "initial": "...",
   "rounds": [{"principle": "harm", "critique": "...", "revision": "..."}, ...],
   "final": "..."}          # the last revision

Prompts go `cai.batch_size` at a time through every step (initial, then critique and revision
of each round); a batch's records are appended when it is done. Randomness: the principle of
round r of prompt i is drawn from (cai.seed, i, r), and each sampled reply's seed from
(cai.seed, i, r, step), so a rerun after a kill writes exactly what the first run would have.
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

INITIAL, CRITIQUE, REVISION = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class Settings:
  revisions: int = 4           # rounds of critique -> revision per prompt
  few_shot: int | None = None  # demonstrations before each round (None: all)
  max_new_tokens: int = 128
  temperature: float = 1.0
  top_p: float = 1.0
  batch_size: int = 64
  seed: int = 0

  @classmethod
  def from_config(cls, cai) -> "Settings":
    few_shot = None if cai.few_shot < 0 else cai.few_shot
    return cls(cai.revisions, few_shot, cai.max_new_tokens, cai.temperature, cai.top_p,
               cai.batch_size, cai.seed)


def row_seed(seed: int, prompt_id: int, round_: int, step: int) -> int:
  return int(np.random.SeedSequence([seed, prompt_id, round_, step]).generate_state(1)[0])


def principle_names(constitution: Constitution, seed: int, prompt_id: int, count: int
                    ) -> list[str]:
  """The principles of a prompt's rounds, drawn at random from (seed, prompt id)."""
  rng = random.Random(f"{seed}/{prompt_id}")
  return [rng.choice(constitution.principles).name for _ in range(count)]


def critique_batch(engine: Any, constitution: Constitution, ids: Sequence[int],
                   prompts: Sequence[Sequence[dict]], settings: Settings) -> list[dict]:
  """The records of one batch of prompts (prompt i of the command has id ids[i])."""
  sampling = SamplingParams(settings.temperature, 0, settings.top_p)

  def sample(conversations, round_, step):
    seeds = [row_seed(settings.seed, i, round_, step) for i in ids]
    return generation.replies(engine, conversations, settings.max_new_tokens, sampling, seeds,
                              settings.batch_size)

  initial = sample([list(p) for p in prompts], 0, INITIAL)
  names = [principle_names(constitution, settings.seed, i, settings.revisions) for i in ids]
  latest, rounds = list(initial), [[] for _ in ids]
  for r in range(settings.revisions):
    principles = [constitution.principle(n[r]) for n in names]
    critiques = sample([prompts_lib.critique_messages(constitution, p, reply, principle,
                                                      settings.few_shot)
                        for p, reply, principle in zip(prompts, latest, principles)],
                       r + 1, CRITIQUE)
    revisions = sample([prompts_lib.revision_messages(constitution, p, reply, principle,
                                                      critique, settings.few_shot)
                        for p, reply, principle, critique
                        in zip(prompts, latest, principles, critiques)], r + 1, REVISION)
    for k, (principle, critique, revision) in enumerate(zip(principles, critiques, revisions)):
      rounds[k].append({"principle": principle.name, "critique": critique,
                        "revision": revision})
      if revision:  # an empty revision keeps the reply it was meant to improve
        latest[k] = revision
  return [{"id": int(i), "prompt": list(p), "initial": first, "rounds": rs, "final": last}
          for i, p, first, rs, last in zip(ids, prompts, initial, rounds, latest)]


def run(engine: Any, constitution: Constitution, prompts: Sequence[Sequence[dict]],
        output: str, settings: Settings) -> list[dict]:
  """Writes (or completes) `output` with one record per prompt; returns all its records,
  in prompt order."""
  prompts = [list(p) for p in prompts]
  out = records_lib.ResumableJsonl(output, records_lib.fingerprint(
      prompts, constitution=constitution.name, settings=dataclasses.asdict(settings)))
  todo = [i for i in range(len(prompts)) if i not in out.done]
  if len(todo) < len(prompts):
    logging.warning("%s: %d of %d prompts already done; continuing", output,
                    len(prompts) - len(todo), len(prompts))
  for begin in range(0, len(todo), settings.batch_size):
    ids = todo[begin:begin + settings.batch_size]
    out.append(critique_batch(engine, constitution, ids, [prompts[i] for i in ids], settings))
    logging.info("critique: %d / %d prompts", len(out.done), len(prompts))
  return sorted(records_lib.read(output), key=lambda r: r["id"])


def sft_records(critiques: Sequence[dict], helpful: Sequence[dict], helpful_ratio: float,
                seed: int = 0) -> list[dict]:
  """SL-CAI training conversations: (prompt, final revision) of every critique record, mixed
  with `helpful_ratio` helpfulness records per revision (drawn from `helpful` at random,
  repeating when it is short), shuffled."""
  out = [{"messages": list(r["prompt"]) + [{"role": "assistant", "content": r["final"]}]}
         for r in critiques if r["final"]]
  count = int(round(helpful_ratio * len(out)))
  if count and not helpful:
    raise ValueError(f"cai.helpful_ratio={helpful_ratio} asks for helpfulness records, but "
                     "cai.helpful_data gave none")
  rng = np.random.default_rng([seed, 23])
  if count:
    picks = rng.permutation(max(count, len(helpful)))[:count] % len(helpful)
    out += [{"messages": helpful[int(i)]["messages"]} for i in picks]
  return [out[i] for i in rng.permutation(len(out))]
