"""The lost-in-the-middle plot: accuracy by the answer's relative position, one line per
context length, from `lm eval --limits=lost_in_the_middle` results.

    python experiments/limits/plot.py runs/limits/smollm2.json [more.json ...]

Writes experiments/limits/lost_in_the_middle.png. Needs the `plot` extra (matplotlib).
"""

import json
import os
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

HERE = os.path.dirname(os.path.abspath(__file__))


def main(paths: list[str]) -> str:
  figure, axes = plt.subplots(1, len(paths), figsize=(5 * len(paths), 3.6), squeeze=False)
  for ax, path in zip(axes[0], paths):
    with open(path, encoding="utf-8") as f:
      results = json.load(f)
    table = results["lost_in_the_middle"]["table"]
    for pairs, row in sorted(table.items(), key=lambda item: int(item[0])):
      positions = [int(p) for p in row["accuracy_by_position"]]
      relative = [p / max(int(pairs) - 1, 1) for p in positions]
      ax.plot(relative, list(row["accuracy_by_position"].values()), "o-",
              label=f"{pairs} pairs ({row['prompt_tokens']} tokens)")
    ax.set_title(os.path.splitext(os.path.basename(path))[0])
    ax.set_xlabel("answer position (0 first, 1 last)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(fontsize=8)
  figure.tight_layout()
  out = os.path.join(HERE, "lost_in_the_middle.png")
  figure.savefig(out, dpi=100)
  return out


if __name__ == "__main__":
  print(main(sys.argv[1:]))
