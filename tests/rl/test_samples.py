"""lm/rl/samples.py: a resumed run writes each step's samples once."""

import json

from lm.rl.samples import SamplesLog


def steps(path) -> list[int]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line)["step"] for line in f]


def test_a_resumed_run_drops_the_lines_it_replays(tmp_path):
  first = SamplesLog(str(tmp_path), 1)
  for step in (2, 4, 6):
    first.write(step, [{"completion": f"{step}a"}, {"completion": f"{step}b"}])
  with open(tmp_path / "samples.jsonl", "a", encoding="utf-8") as f:
    f.write('{"step": 8, "compl')  # the kill cut this line short
  # Resumed from the checkpoint at step 4: its first samples are step 5's (PPO's label).
  resumed = SamplesLog(str(tmp_path), 5)
  assert steps(tmp_path / "samples.jsonl") == [2, 2, 4, 4]
  for step in (6, 8):
    resumed.write(step, [{"completion": f"{step}a"}, {"completion": f"{step}b"}])
  with open(tmp_path / "samples.jsonl", encoding="utf-8") as f:
    lines = [json.loads(line) for line in f]
  assert [(s["step"], s["completion"]) for s in lines] == [
      (step, f"{step}{c}") for step in (2, 4, 6, 8) for c in "ab"]


def test_a_fresh_run_starts_an_empty_log(tmp_path):
  SamplesLog(str(tmp_path), 0).write(0, [{"completion": "x"}])
  assert steps(tmp_path / "samples.jsonl") == [0]
