"""The critique command: records in the documented shape, the SFT mix, and resumption after
a kill (every prompt exactly once, and the same records as an uninterrupted run)."""

import json

import pytest

from lm.constitutional import constitution as constitution_lib
from lm.constitutional import critique
from lm.constitutional import records as records_lib

CONSTITUTION = constitution_lib.load("synthetic")
PROMPTS = [[{"role": "user", "content": f"Repeat: cat {w} dog"}]
           for w in ("heck", "red", "dang", "sun")]
SETTINGS = critique.Settings(revisions=2, few_shot=0, max_new_tokens=8, batch_size=2, seed=1)


class Killed(Exception):
  pass


class KilledAfter:
  """The real engine, interrupted (as by a kill) at its n-th generate call."""

  def __init__(self, engine, calls: int):
    self._engine, self._left = engine, calls

  def __getattr__(self, name):
    return getattr(self._engine, name)

  def generate(self, *args, **kwargs):
    self._left -= 1
    if self._left < 0:
      raise Killed()
    return self._engine.generate(*args, **kwargs)


def test_killed_during_critique_then_rerun_writes_every_prompt_once(cai_engine, tmp_path):
  whole = critique.run(cai_engine, CONSTITUTION, PROMPTS, str(tmp_path / "whole.jsonl"),
                       SETTINGS)
  path = str(tmp_path / "resumed.jsonl")
  # Per batch of 2 prompts: 1 initial + 2 x (critique, revision) = 5 generate calls; the 7th
  # call is the second batch's first critique.
  with pytest.raises(Killed):
    critique.run(KilledAfter(cai_engine, 6), CONSTITUTION, PROMPTS, path, SETTINGS)
  assert [r["id"] for r in records_lib.read(path)] == [0, 1]
  with open(path, "a", encoding="utf-8") as f:   # a write torn by the kill
    f.write('{"id": 2, "prompt": [{"role"')
  resumed = critique.run(cai_engine, CONSTITUTION, PROMPTS, path, SETTINGS)
  with open(path, encoding="utf-8") as f:
    ids = [json.loads(line).get("id") for line in f][1:]
  assert sorted(ids) == [0, 1, 2, 3]                 # each prompt exactly once
  assert resumed == whole                            # and what one run would have written
  for i, record in enumerate(whole):
    assert record["prompt"] == PROMPTS[i]
    assert [r["principle"] for r in record["rounds"]] == critique.principle_names(
        CONSTITUTION, 1, i, 2)
    latest = record["initial"]
    for r in record["rounds"]:
      latest = r["revision"] or latest
    assert record["final"] == latest


def test_a_file_of_other_prompts_is_refused(cai_engine, tmp_path):
  path = str(tmp_path / "c.jsonl")
  records_lib.ResumableJsonl(path, "another-fingerprint")
  with pytest.raises(ValueError, match="written for other prompts"):
    critique.run(cai_engine, CONSTITUTION, PROMPTS, path, SETTINGS)


def test_sft_records_mix_helpfulness_at_the_ratio():
  finals = [{"prompt": [{"role": "user", "content": f"q{i}"}], "final": f"a{i}"}
            for i in range(4)] + [{"prompt": [{"role": "user", "content": "q"}], "final": ""}]
  helpful = [{"messages": [{"role": "user", "content": "h"},
                           {"role": "assistant", "content": str(i)}]} for i in range(3)]
  out = critique.sft_records(finals, helpful, helpful_ratio=1.5, seed=0)
  revisions = [r for r in out if r["messages"][0]["content"].startswith("q")]
  assert sorted(r["messages"][1]["content"] for r in revisions) == ["a0", "a1", "a2", "a3"]
  assert len(out) - len(revisions) == 6             # 1.5 per revision; the empty final dropped
  assert critique.sft_records(finals, helpful, 0.0) and len(
      critique.sft_records(finals, helpful, 0.0)) == 4
