"""One PNG per preference run: loss, accuracy and margin over steps, train and held-out.

    python experiments/preference/plot.py runs/reward_tasks [runs/dpo_tasks ...]
    python experiments/preference/plot.py runs/rm_try=reward_tasks   # named reward_tasks

Reads each workdir's metrics.jsonl and writes experiments/preference/<run name>.png (the
workdir's name, or the one after "="). The
reward stage logs accuracy / margin; DPO logs rewards/accuracies / rewards/margins (TRL's
names): whichever the run has. Needs the `plot` extra (matplotlib).
"""

import json
import os
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

HERE = os.path.dirname(os.path.abspath(__file__))
PANELS = (("loss", ("loss",)), ("accuracy", ("accuracy", "rewards/accuracies")),
          ("margin", ("margin", "rewards/margins")))


def series(records: list[dict], name: str) -> tuple[list[int], list[float]]:
  points = [(r["step"], r[name]) for r in records if name in r]
  return [s for s, _ in points], [v for _, v in points]


def plot(workdir: str, run_name: str = "") -> str:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    records = [json.loads(line) for line in f if line.strip()]
  figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
  for ax, (title, names) in zip(axes, PANELS):
    for name in names:
      for prefix, style in (("", "-"), ("eval_", "o-")):
        steps, values = series(records, prefix + name)
        if steps:
          ax.plot(steps, values, style, label=("held-out " if prefix else "train ") + name,
                  markersize=4, linewidth=1.2 if prefix else 0.8)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  name = run_name or os.path.basename(os.path.normpath(workdir))
  figure.suptitle(name)
  figure.tight_layout()
  out = os.path.join(HERE, f"{name}.png")
  figure.savefig(out, dpi=100)
  return out


if __name__ == "__main__":
  for argument in sys.argv[1:]:
    print(plot(*argument.split("=", 1)))
