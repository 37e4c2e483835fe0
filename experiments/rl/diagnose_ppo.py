"""Where a policy loses builtin:preferences' true reward (lm/data/preferences.py: +2 for a
reply that starts with the answer, -0.1 per extra word, -3 for a banned word), on every
held-out prompt: sampled at rl.temperature with PPO's evaluation key, and greedy.

    python experiments/rl/diagnose_ppo.py configs/ppo_tasks.py:SFT,RM WORKDIR [--json=OUT]
    python experiments/rl/diagnose_ppo.py configs/ppo_tasks.py:SFT,RM WORKDIR --rerank=K

WORKDIR's newest checkpoint, or the starting model (`init_from`) when WORKDIR is new. Needs
no reward model (the config's reward is replaced by the true reward alone). Prints, per task
and overall: the mean true reward, the fraction correct, extra words per reply, the fraction
with a banned word, and what the reward misses by each cause (2 x wrong, 0.1 x extra, 3 x
banned).

With --rerank=K: K samples per held-out prompt (rl.temperature), each scored by the reward
model RM and the true reward; per task: the mean true reward of a sample, that of the sample
the reward model ranks first (best-of-K: roughly where KL-regularized RL against that reward
model can lead), that of the truly best one (the ceiling), and how often the reward model
ranks a correct sample above a wrong one of the same prompt (its accuracy where PPO needs it,
on the policy's own replies).
"""

import collections
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


def breakdown(answer: str, reply: str) -> dict[str, float]:
  """The true reward of `reply` and its three parts."""
  words, answer_words = preferences._words(reply), preferences._words(answer)  # pylint: disable=protected-access
  return {"true": preferences.true_reward(answer, reply),
          "correct": float(preferences.answers(answer, reply)),
          "extra": float(min(max(len(words) - len(answer_words), 0), 10)),
          "banned": float(any(w in preferences.BANNED for w in words))}


def summarize(rows: list[dict]) -> dict[str, float]:
  mean = lambda k: float(np.mean([r[k] for r in rows]))
  return {"n": len(rows), "true": mean("true"), "correct": mean("correct"),
          "extra_words": mean("extra"), "banned": mean("banned"),
          "lost_wrong": 2 * (1 - mean("correct")), "lost_extra": 0.1 * mean("extra"),
          "lost_banned": 3 * mean("banned"),
          "se_true": float(np.std([r["true"] for r in rows]) / np.sqrt(len(rows)))}


def main(spec: str, workdir: str) -> dict:
  config = load_config(spec).unlock()
  config.rl.reward, config.rl.reward_weights, config.rl.reward_model = "true", "", ""
  config.ppo.value_init = ""
  out = {}
  with newest_state(config, workdir) as (setup, state):
    stage = setup.stage
    eval_set = stage.eval_set(setup.source.eval, setup.config, setup.rows)
    batches = [setup.to_global(b) for b in eval_set.batches]
    for name, temperature in (("sampled", config.rl.temperature), ("greedy", 0.0)):
      sampler = ppo_iteration._Sampler(stage, setup)  # pylint: disable=protected-access
      sampler.settings = rollout_lib.Settings(**{**sampler.settings.__dict__,
                                                 "temperature": temperature})
      rows, examples = [], collections.defaultdict(list)
      for batch in batches:
        rollout = sampler.sample(state.params, batch,
                                 jax.random.fold_in(sampler.key, ppo_iteration._EVAL_KEY), 1)  # pylint: disable=protected-access
        _, _, prompts, texts, _ = sampler.score(rollout, batch["index"], 1, stage.eval_records)
        weight = rollout_lib.to_host(batch["weight"])
        for i, (prompt, text) in enumerate(zip(prompts, texts)):
          if not weight[i]:
            continue
          record = stage.eval_records[int(rollout_lib.to_host(batch["index"])[i])]
          row = {"task": record["task"], **breakdown(record["answer"], text)}
          rows.append(row)
          if len(examples[record["task"]]) < 3:
            examples[record["task"]].append((prompt, text, record["answer"], row["true"]))
      by_task = collections.defaultdict(list)
      for row in rows:
        by_task[row["task"]].append(row)
      out[name] = {"all": summarize(rows),
                   **{task: summarize(r) for task, r in sorted(by_task.items())},
                   "examples": dict(examples)}
  out["step"] = int(jax.device_get(state.step))
  return out


def rerank(spec: str, workdir: str, k: int) -> dict:
  config = load_config(spec).unlock()
  reward_model = config.rl.reward_model
  config.rl.reward, config.rl.reward_weights = "true,model", ""
  config.ppo.value_init = ""
  per_task = collections.defaultdict(lambda: collections.defaultdict(list))
  with newest_state(config, workdir) as (setup, state):
    stage = setup.stage
    eval_set = stage.eval_set(setup.source.eval, setup.config, setup.rows)
    sampler = ppo_iteration._Sampler(stage, setup)  # pylint: disable=protected-access
    for batch in (setup.to_global(b) for b in eval_set.batches):
      rollout = sampler.sample(state.params, batch,
                               jax.random.fold_in(sampler.key, ppo_iteration._EVAL_KEY), k)  # pylint: disable=protected-access
      _, terms, _, texts, _ = sampler.score(rollout, batch["index"], k, stage.eval_records)
      weight = rollout_lib.to_host(batch["weight"])
      index = rollout_lib.to_host(batch["index"])
      for i in range(len(weight)):
        if not weight[i]:
          continue
        task = stage.eval_records[int(index[i])]["task"]
        true, score = terms["true"][i * k:(i + 1) * k], terms["model"][i * k:(i + 1) * k]
        for key in ("all", task):
          out = per_task[key]
          out["mean"].append(float(np.mean(true)))
          out["best_of_k_by_rm"].append(float(true[int(np.argmax(score))]))
          out["best_of_k"].append(float(np.max(true)))
          out["distinct"].append(len(set(texts[i * k:(i + 1) * k])))
          good, bad = score[true > 1], score[true <= 1]
          out["pairs_right"].extend(
              (0.5 * (g == b) + (g > b)) for g in good for b in bad)
  del reward_model
  return {task: {"prompts": len(v["mean"]), "mean": float(np.mean(v["mean"])),
                 "best_of_k_by_rm": float(np.mean(v["best_of_k_by_rm"])),
                 "best_of_k": float(np.mean(v["best_of_k"])),
                 "distinct_replies": float(np.mean(v["distinct"])),
                 "correct_over_wrong_pairs": len(v["pairs_right"]),
                 "rm_accuracy_on_them": float(np.mean(v["pairs_right"])) if v["pairs_right"]
                 else float("nan")}
          for task, v in sorted(per_task.items())}


def print_table(result: dict) -> None:
  for name in ("sampled", "greedy"):
    print(f"\n{name} (step {result['step']}):")
    print(f"{'task':8s} {'n':>4s} {'true':>6s} {'correct':>8s} {'extra':>6s} {'banned':>7s}"
          f" {'lost: wrong':>12s} {'extra':>6s} {'banned':>7s}")
    for task, s in result[name].items():
      if task == "examples":
        continue
      print(f"{task:8s} {s['n']:4d} {s['true']:6.3f} {s['correct']:8.3f} "
            f"{s['extra_words']:6.3f} {s['banned']:7.3f} {s['lost_wrong']:12.3f} "
            f"{s['lost_extra']:6.3f} {s['lost_banned']:7.3f}")


if __name__ == "__main__":
  args = [a for a in sys.argv[1:] if not a.startswith("--")]
  k = next((int(a.removeprefix("--rerank=")) for a in sys.argv if a.startswith("--rerank=")), 0)
  if k:
    result = rerank(*args[:2], k)
    print(json.dumps(result, indent=1))
  else:
    result = main(*args[:2])
    print_table(result)
  for a in sys.argv[1:]:
    if a.startswith("--json="):
      with open(a.removeprefix("--json="), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
