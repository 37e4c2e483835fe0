"""Held-out accuracy of a reward model on the preference world, per kind of pair and per task.

    python experiments/preference/reward_accuracy.py runs/reward_tasks

Scores both replies of every held-out pair (300: 50 prompts per built-in task, no label
noise) with lm.RewardModel and counts how often the chosen one scores higher.
"""

import collections
import json
import sys

import lm
from lm.data import preferences


def accuracy(workdir: str) -> dict:
  model = lm.RewardModel(workdir)
  pairs = preferences.records("eval")
  chosen = model.score_batch([p["prompt"] for p in pairs], [p["chosen"] for p in pairs])
  rejected = model.score_batch([p["prompt"] for p in pairs], [p["rejected"] for p in pairs])
  right = collections.defaultdict(list)
  for pair, c, r in zip(pairs, chosen, rejected):
    for key in ("all", f"kind/{pair['kind']}", f"task/{pair['task']}",
                f"correct_by_task/{pair['task']}" if pair["kind"] == "correct" else None):
      if key:
        right[key].append(bool(c > r))
  return {key: round(sum(v) / len(v), 4) for key, v in sorted(right.items())}


if __name__ == "__main__":
  print(json.dumps(accuracy(sys.argv[1]), indent=1))
