"""How often a language model's own likelihood prefers the chosen reply of the held-out pairs,
per kind of pair and per task: what the model already knows before it learns preferences.

    python experiments/preference/likelihood_accuracy.py runs/sft_tasks [runs/dpo_tasks]

For each of the 300 held-out pairs (lm/data/preferences.py, no label noise), the summed
log-probability of each reply's tokens (with its end-of-turn token) given the prompt. With a
second workdir (a DPO run of the first), also the accuracy of DPO's implicit reward,
log pi(y) - log ref(y), as TRL's rewards/accuracies counts it. On correct-vs-wrong pairs,
whose replies have the same form, the likelihood accuracy is how often the model ranks the
right answer above the wrong one: an upper bound, roughly, on what a reward model started
from it can read without learning the task better.
"""

import collections
import json
import sys

import numpy as np

from lm.data import formats, preferences
from lm.infer.engine import Engine


def reply_logps(engine: Engine, pairs: list[dict], side: str) -> np.ndarray:
  prompts, replies = [], []
  for pair in pairs:
    messages = formats.preference_of(pair)[0]
    ids, mask = formats.render_reply(engine.tokenizer, messages, pair[side])
    first = int(np.argmax(mask))
    prompts.append([int(t) for t in ids[:first]])
    replies.append([int(t) for t in ids[first:]])
  return np.array([float(np.sum(x)) for x in engine.score(prompts, replies)])


def accuracy(policy_dir: str, reference_dir: str | None = None) -> dict:
  pairs = preferences.records("eval")
  scored = {}
  for name, workdir in (("likelihood", policy_dir), ("reference", reference_dir)):
    if workdir:
      engine = Engine.from_workdir(workdir)
      scored[name] = {side: reply_logps(engine, pairs, side) for side in ("chosen", "rejected")}
  prefers = {"likelihood": scored["likelihood"]["chosen"] > scored["likelihood"]["rejected"]}
  if reference_dir:
    policy, reference = scored["likelihood"], scored["reference"]
    prefers["implicit_reward"] = ((policy["chosen"] - reference["chosen"])
                                  > (policy["rejected"] - reference["rejected"]))
  out = {}
  for measure, right in prefers.items():
    groups = collections.defaultdict(list)
    for pair, ok in zip(pairs, right):
      for key in ("all", f"kind/{pair['kind']}", f"task/{pair['task']}",
                  f"correct_by_task/{pair['task']}" if pair["kind"] == "correct" else None):
        if key:
          groups[key].append(bool(ok))
    out[measure] = {key: round(float(np.mean(v)), 4) for key, v in sorted(groups.items())}
  return out


if __name__ == "__main__":
  print(json.dumps(accuracy(*sys.argv[1:3]), indent=1))
