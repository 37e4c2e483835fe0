"""Training pairs for a reward model of the preference world that has to judge the policy's
own replies (as InstructGPT's raters compared samples of the policy): for each of the first
N train prompts of `builtin:preferences`, the SFT model samples one reply (rl.temperature);
with probability CORRECT the pair is correctness (the true answer against the sample when the
sample is wrong; the sample against a generated wrong answer when it is right), else a
generated "concise" or "banned" pair (lm/data/preferences.py), so the surface rules stay.

    python experiments/rl/reward_pairs.py configs/ppo_tasks.py:SFT,RM OUT.jsonl [N] [CORRECT]
    python -m lm train --config=configs/reward_tasks.py:/work/runs/sft_tasks \\
        --config.data.source=jsonl:OUT.jsonl --workdir=runs/reward_onpolicy

Why (experiments/rl/ppo.md): the SFT policy already answers barely, so a reward model can
teach it only correctness, and the default reward model ranks a correct sample of the
policy above a wrong one of the same prompt at chance (50%). The labels are the world's
preferences, never its reward values; held-out prompts are never used.
"""

import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from evaluate_ppo import load_config, newest_state  # pylint: disable=wrong-import-position
from lm.data import preferences  # pylint: disable=wrong-import-position
from lm.rl import ppo_iteration  # pylint: disable=wrong-import-position
from lm.rl import rollout as rollout_lib  # pylint: disable=wrong-import-position


def main(spec: str, out: str, n: int = 6400, correct: float = 0.8, seed: int = 0) -> None:
  config = load_config(spec).unlock()
  config.rl.reward, config.rl.reward_weights, config.rl.reward_model = "true", "", ""
  config.ppo.value_init = ""
  config.data.eval_documents = 0
  workdir = out + ".workdir"
  pairs = []
  with newest_state(config, workdir) as (setup, state):
    rng = np.random.default_rng([seed, 13])
    train = list(setup.source.train)
    records = [train[int(i)] for i in rng.permutation(len(train))[:n]]
    stage = setup.stage
    eval_set = stage.eval_set(records, setup.config, setup.rows)
    sampler = ppo_iteration._Sampler(stage, setup)  # pylint: disable=protected-access
    for number, batch in enumerate(setup.to_global(b) for b in eval_set.batches):
      rollout = sampler.sample(state.params, batch, jax.random.fold_in(sampler.key, number), 1)
      _, _, prompts, texts, _ = sampler.score(rollout, batch["index"], 1, records)
      weight = rollout_lib.to_host(batch["weight"])
      index = rollout_lib.to_host(batch["index"])
      for i, (prompt, text) in enumerate(zip(prompts, texts)):
        if not weight[i]:
          continue
        record = records[int(index[i])]
        answer = record["answer"]
        if rng.random() < correct:
          if preferences.true_reward(answer, text) >= 2.0:
            better, worse = text, preferences._wrong(answer, rng)  # pylint: disable=protected-access
          else:
            better, worse = answer, text
          kind = "correct"
        else:
          kind = ("concise", "banned")[int(rng.integers(2))]
          better, worse = preferences._pair(answer, kind, rng)  # pylint: disable=protected-access
        if preferences.true_reward(answer, better) <= preferences.true_reward(answer, worse):
          continue  # a sample equal to the answer in words but not in text
        pairs.append({"prompt": prompt, "chosen": better, "rejected": worse,
                      "task": record["task"], "kind": kind})
  with open(out, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(p) + "\n" for p in pairs)
  print(f"{len(pairs)} pairs in {out}")


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2], *(int(a) if i == 0 else float(a)
                                   for i, a in enumerate(sys.argv[3:5])))
