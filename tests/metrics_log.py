"""Reading a training run's workdir/metrics.jsonl from the subprocess tests."""

import json
import os


def records(workdir) -> list[dict]:
  """The complete lines of `workdir`/metrics.jsonl as written so far (a line the writer has
  not finished, e.g. in a run being killed, is left out); [] before the file exists."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.endswith("\n")]
