"""Continues a pipeline from a saved state in a fresh process and prints its next batches.

  python pipeline_worker.py STATE.json NUM_BATCHES '{"data.num_threads": 2, ...}'
"""

import hashlib
import json
import sys

from tests.data import test_pipeline


def main(state_path: str, num_batches: int, overrides: dict) -> None:
  batches = test_pipeline.make_batches(**overrides)
  with open(state_path, encoding="utf-8") as f:
    batches.set_state(json.load(f))
  for _ in range(num_batches):
    print(test_pipeline.digest(next(batches)))
  batches.close()


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]))
