"""One PNG per PPO run: rewards (the reward model's, which PPO optimizes, and the true reward
of the preference world, which it never sees), KL to the reference against its target, and
the PPO diagnostics (value loss, explained variance, clip fraction, entropy, length).

    python experiments/rl/plot_ppo.py runs/ppo_tasks [more workdirs ...] \
        [--start=runs/ppo_sft_baseline/eval_ppo.json]

Reads each workdir's metrics.jsonl and config.json; writes experiments/rl/<run name>.png.
`--start`: the starting model's held-out evaluation (experiments/rl/evaluate_ppo.py), drawn
at step 0 of the held-out curves (the loop first evaluates at train.eval_every).
Needs the `plot` extra (matplotlib).
"""

import json
import os
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

HERE = os.path.dirname(os.path.abspath(__file__))
PANELS = (
    ("reward model score", (("rewards/model/mean", "train (sampled)"),
                            ("eval_rewards/model", "held-out (sampled)"),
                            ("eval_greedy/rewards/model", "held-out (greedy)"))),
    ("true reward (never optimized)", (("rewards/true/mean", "train (sampled)"),
                                       ("eval_rewards/true", "held-out (sampled)"),
                                       ("eval_greedy/rewards/true", "held-out (greedy)"))),
    ("KL to the reference, nats per response", (("objective/kl", "train"),
                                                ("eval_kl", "held-out"))),
    ("KL coefficient", (("objective/kl_coef", "kl_coef"),)),
    ("value function", (("loss/value_avg", "value loss"),
                        ("val/explained_variance", "explained variance"))),
    ("policy", (("policy/clipfrac_avg", "clip fraction"), ("policy/approxkl_avg", "approx KL"),
                ("policy/entropy_avg", "entropy / token"))),
    ("response length", (("completions/mean_length", "train"), ("eval_length", "held-out"))),
)


def series(records: list[dict], name: str) -> tuple[list[int], list[float]]:
  points = [(r["step"], r[name]) for r in records if name in r]
  return [s for s, _ in points], [v for _, v in points]


def plot(workdir: str, start: dict | None = None) -> str:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    records = [json.loads(line) for line in f if line.strip()]
  if start:
    records.insert(0, {**start, "step": 0})
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    target = json.load(f)["ppo"]["kl_target"]
  figure, axes = plt.subplots(2, 4, figsize=(17, 7))
  for ax, (title, names) in zip(axes.flat, PANELS):
    for name, label in names:
      steps, values = series(records, name)
      if not steps:
        continue
      if name.startswith("eval_"):
        ax.plot(steps, values, "o-", label=label, markersize=4, linewidth=1.4)
      else:  # noisy (32 rollouts a point): faint, with a running mean of 5 points
        line, = ax.plot(steps, values, "-", linewidth=0.6, alpha=0.35)
        smooth = [sum(values[max(0, i - 4):i + 1]) / len(values[max(0, i - 4):i + 1])
                  for i in range(len(values))]
        ax.plot(steps, smooth, "-", color=line.get_color(), linewidth=1.2,
                label=label + ", mean of 5")
    if title.startswith("KL to") and target:
      ax.axhline(target, color="gray", linestyle="--", linewidth=1, label="ppo.kl_target")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
  axes.flat[-1].axis("off")
  name = os.path.basename(os.path.normpath(workdir))
  figure.suptitle(f"PPO: {name}")
  figure.tight_layout()
  out = os.path.join(HERE, f"{name}.png")
  figure.savefig(out, dpi=90)
  return out


if __name__ == "__main__":
  starts = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--start=")]
  baseline = None
  if starts:
    with open(starts[0], encoding="utf-8") as f:
      baseline = {k: v for k, v in json.load(f).items() if k.startswith("eval_")}
  for path in sys.argv[1:]:
    if not path.startswith("--"):
      print(plot(path, baseline))
