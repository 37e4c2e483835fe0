"""The pipeline's data and evaluation steps on a tiny model (plumbing: every step's files, the
summary, and a rerun that redoes nothing), and the config checks that name the field. The
training steps are the stages' own (tests/stages); the full pipeline with training runs in
experiments/constitutional/ (minutes, too long for this suite)."""

import json
import os

import pytest

from lm import config as config_lib
from lm.constitutional import config as cai_config
from lm.constitutional import pipeline
from tests.infer import models


def _config(policy: str, cache: str):
  config = cai_config.pipeline_config()
  cai = config.cai
  cai.constitution = "synthetic"
  cai.policy = policy
  cai.num_prompts, cai.revisions, cai.few_shot = 4, 1, 0
  cai.max_new_tokens, cai.batch_size = 8, 4
  cai.eval_red_team, cai.eval_benign, cai.eval_max_new_tokens = 4, 4, 8
  cai.skip = "sft,preference_model,rl,dpo"
  config.sft.data.cache_dir = cache
  return config_lib.lock(config)


def test_critique_label_evaluate_then_a_rerun_redoes_nothing(tmp_path):
  policy = models.make_workdir(str(tmp_path / "policy"))
  workdir = str(tmp_path / "cai")
  config = _config(policy, str(tmp_path / "cache"))
  summaries = pipeline.Pipeline(config, workdir).run()
  for step in ("critique", "label", "evaluate"):
    assert os.path.exists(os.path.join(workdir, step, "done.json")), step
  assert summaries["sft"] is None and summaries["dpo"] is None
  critiques = [json.loads(l) for l in open(os.path.join(workdir, "critique", "records.jsonl"))]
  assert [r["id"] for r in critiques[1:]] == [0, 1, 2, 3]
  sft = [json.loads(l) for l in open(os.path.join(workdir, "critique", "sft.jsonl"))]
  assert len(sft) == 4 + 4          # finals + helpfulness at cai.helpful_ratio = 1
  labels = [json.loads(l) for l in open(os.path.join(workdir, "label", "records.jsonl"))]
  assert [r["id"] for r in labels[1:]] == [0, 1, 2, 3]
  results = summaries["evaluate"]["results"]
  assert results["RL-CAI (DPO)"] is None and results["SL-CAI"] is None
  assert results["helpful-only"]["red_team_prompts"] == 4
  table = pipeline.format_summary(summaries)
  assert "helpful-only" in table and "skipped" in table
  again = pipeline.Pipeline(config, workdir).run()   # every step done: read back, not rerun
  assert again["critique"]["wall_seconds"] == summaries["critique"]["wall_seconds"]


def test_config_errors_name_the_field():
  config = cai_config.pipeline_config()
  config.cai.revisions = 0
  config.cai.skip = "critique,nope"
  config.cai.clamp_low = 0.7
  with pytest.raises(ValueError) as e:
    cai_config.validate(config)
  message = str(e.value)
  for expected in ("cai.revisions=0 must be positive", "unknown step 'nope'", "cai.clamp_low=0.7"):
    assert expected in message
