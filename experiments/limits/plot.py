"""The lost-in-the-middle plot: accuracy by the answer's relative position, one line per
context length, from `lm eval --limits=lost_in_the_middle` results.

    python experiments/limits/plot.py runs/limits/smollm2.json [more.json ...]
    python experiments/limits/plot.py --out=trained.png runs/litm/litm.json ...

Writes experiments/limits/lost_in_the_middle.png (or --out=NAME in that folder), one panel
per results file. Needs the `plot` extra (matplotlib).
"""

import json
import os
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

HERE = os.path.dirname(os.path.abspath(__file__))


def main(paths: list[str], name: str = "lost_in_the_middle.png") -> str:
  figure, axes = plt.subplots(1, len(paths), figsize=(5 * len(paths), 3.6), squeeze=False)
  for ax, path in zip(axes[0], paths):
    with open(path, encoding="utf-8") as f:
      results = json.load(f)
    table = results["lost_in_the_middle"]["table"]
    for pairs, row in sorted(table.items(), key=lambda item: int(item[0])):
      points = sorted((int(p), acc) for p, acc in row["accuracy_by_position"].items())
      relative = [p / max(int(pairs) - 1, 1) for p, _ in points]
      ax.plot(relative, [acc for _, acc in points], "o-",
              label=f"{pairs} pairs ({row['prompt_tokens']} tokens)")
    ax.set_title(os.path.splitext(os.path.basename(path))[0])
    ax.set_xlabel("answer position (0 first, 1 last)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(fontsize=8)
  figure.tight_layout()
  out = os.path.join(HERE, name)
  figure.savefig(out, dpi=100)
  return out


if __name__ == "__main__":
  args = sys.argv[1:]
  names = [a.split("=", 1)[1] for a in args if a.startswith("--out=")]
  print(main([a for a in args if not a.startswith("--out=")], *names[-1:]))
