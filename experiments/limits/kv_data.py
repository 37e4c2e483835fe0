"""Training data for the lost-in-the-middle eval's format: JSON-lines chat records, each a
context of key: value lines and questions about keys at random lines (lm/eval/limits.py,
`kv_conversation`), for `configs/litm.py`.

    python experiments/limits/kv_data.py runs/litm/kv.jsonl --records=40000 \
        --min_pairs=2 --max_pairs=16 --questions=4 --seed=1 --restate

The eval draws its items from its own generator (seed 0 by default); with 16^6 keys a
training context repeating an eval context is practically impossible.
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from lm.eval import limits  # pylint: disable=wrong-import-position


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("output")
  parser.add_argument("--records", type=int, default=40_000)
  parser.add_argument("--min_pairs", type=int, default=2)
  parser.add_argument("--max_pairs", type=int, default=32)
  parser.add_argument("--questions", type=int, default=4)
  parser.add_argument("--seed", type=int, default=1)
  parser.add_argument("--restate", action="store_true",
                      help='answer "key: value" (the whole line), not the value alone')
  args = parser.parse_args()
  if not 1 <= args.min_pairs <= args.max_pairs:
    parser.error(f"--min_pairs={args.min_pairs} --max_pairs={args.max_pairs}: need "
                 "1 <= min_pairs <= max_pairs")
  rng = np.random.default_rng(args.seed)
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w", encoding="utf-8") as f:
    for _ in range(args.records):
      pairs = int(rng.integers(args.min_pairs, args.max_pairs + 1))
      f.write(json.dumps(limits.kv_conversation(pairs, args.questions, rng, args.restate)) + "\n")
  print(f"{args.records} records -> {args.output}")


if __name__ == "__main__":
  main()
