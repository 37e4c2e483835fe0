"""One PNG per GRPO run: sampled reward, KL to the reference, entropy, and held-out exact
match (greedy) per task over steps.

    python experiments/rl/evaluate.py runs/grpo_tasks     # writes runs/grpo_tasks/exact_match.json
    python experiments/rl/plot.py runs/grpo_tasks [runs/grpo_lookup ...]

Reads each workdir's metrics.jsonl (and every exact_match_n<N>.json, else exact_match.json
= 50 questions per task, when there: each task at the steps it was scored) and writes
experiments/rl/<run name>.png. Train-side curves are smoothed over 10 logged points (the
per-step reward of 128 samples is noisy). Needs the `plot` extra (matplotlib).
"""

import json
import os
import re
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

HERE = os.path.dirname(os.path.abspath(__file__))
SMOOTH = 10


def series(records: list[dict], name: str) -> tuple[np.ndarray, np.ndarray]:
  points = [(r["step"], r[name]) for r in records if name in r]
  return np.array([s for s, _ in points]), np.array([v for _, v in points])


def smoothed(values: np.ndarray) -> np.ndarray:
  kernel = np.ones(min(SMOOTH, len(values))) / min(SMOOTH, len(values))
  return np.convolve(values, kernel, mode="valid") if len(values) else values


def exact_match_files(workdir: str) -> list[tuple[str, int]]:
  """The held-out scores (evaluate.py) of the run: (path, questions per task) per file."""
  sizes = sorted(int(name[len("exact_match_n"):-len(".json")]) for name in os.listdir(workdir)
                 if re.fullmatch(r"exact_match_n\d+\.json", name))
  files = [(os.path.join(workdir, f"exact_match_n{n}.json"), n) for n in sizes]
  path = os.path.join(workdir, "exact_match.json")
  return files or ([(path, 50)] if os.path.exists(path) else [])


def plot(workdir: str) -> str:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    records = [json.loads(line) for line in f if line.strip()]
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for name, label in (("rewards/exact/mean", "sampled exact match (T=1)"),
                      ("reward", "reward (exact + 0.1 format)")):
    steps, values = series(records, name)
    if len(values):
      line, = axes[0].plot(steps[len(steps) - len(smoothed(values)):], smoothed(values),
                           label=label)
      axes[0].plot(steps, values, alpha=0.25, color=line.get_color())
  axes[0].set_title("rollout reward per step (smoothed)")
  axes[0].legend()
  for name in ("kl", "entropy"):
    steps, values = series(records, name)
    line, = axes[1].plot(steps[len(steps) - len(smoothed(values)):], smoothed(values),
                         label=name)
    axes[1].plot(steps, values, alpha=0.25, color=line.get_color())
  axes[1].set_title("KL(policy || SFT) and entropy, nats per completion token")
  axes[1].legend()
  files = exact_match_files(workdir)
  for path, n in files:  # every task at the steps scored with n questions
    with open(path, encoding="utf-8") as f:
      results = {int(k): v for k, v in json.load(f).items()}
    for task in sorted({t for scores in results.values() for t in scores}):
      steps = sorted(s for s in results if task in results[s])
      accuracy = np.array([results[s][task] for s in steps])
      stderr = np.sqrt(accuracy * (1 - accuracy) / n)
      label = task if len(files) == 1 else f"{task}, n={n}"
      line, = axes[2].plot(steps, 100 * accuracy, marker="o", label=label)
      axes[2].fill_between(steps, 100 * (accuracy - stderr), 100 * (accuracy + stderr),
                           alpha=0.2, color=line.get_color())
      if steps[0] == 0:
        axes[2].axhline(100 * accuracy[0], ls=":", color=line.get_color())
  if files:
    sizes = ", ".join(str(n) for _, n in files)
    axes[2].set_title(f"held-out exact match, greedy, %\n(n={sizes} per task, band: ±1 "
                      "standard error; dotted: SFT)")
    axes[2].legend()
  for ax in axes:
    ax.set_xlabel("step")
  fig.suptitle(os.path.basename(os.path.normpath(workdir)))
  fig.tight_layout()
  out = os.path.join(HERE, os.path.basename(os.path.normpath(workdir)) + ".png")
  fig.savefig(out, dpi=80)
  return out


if __name__ == "__main__":
  for workdir in sys.argv[1:]:
    print(plot(workdir))
