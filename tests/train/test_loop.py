"""End-to-end training on tiny configs: loss falls, reaches the entropy bound, resumes."""

import glob
import json
import os

import numpy as np
import pytest

from lm.stages import train_and_evaluate


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def train_losses(workdir):
  return {m["step"]: m["loss"] for m in read_metrics(workdir) if "loss" in m}


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, data_cache):
  """Six steps on the Markov corpus, logging every step; shared by several tests."""
  from lm import config as config_lib  # pylint: disable=import-outside-toplevel
  config = config_lib.base_config()
  config.model.preset = "tiny"
  config.data.cache_dir = data_cache
  config.data.source = "synthetic:markov"
  t = config.train
  t.steps, t.batch_size, t.seq_len, t.lr, t.warmup_steps = 6, 8, 32, 3e-3, 2
  t.log_every, t.eval_every, t.checkpoint_every, t.eval_batches = 1, 3, 3, 1
  t.profile_steps = "2:4"
  workdir = str(tmp_path_factory.mktemp("short_run"))
  return config, workdir, train_and_evaluate(config, workdir)


def test_loss_falls_and_outputs_are_written(short_run):
  _, workdir, result = short_run
  metrics = read_metrics(workdir)
  losses = [m["loss"] for m in metrics if "loss" in m]
  assert len(losses) == 6 and losses[-1] < losses[0]
  for logged in (m for m in metrics if "loss" in m):
    for key in ("step", "loss", "lr", "grad_norm", "tokens_per_sec", "mfu"):
      assert np.isfinite(logged[key]) and logged[key] >= 0, key
  evals = [m for m in metrics if "eval_loss" in m]
  assert [m["step"] for m in evals] == [3, 6]
  for m in evals:
    assert m["eval_perplexity"] == pytest.approx(np.exp(m["eval_loss"]), rel=1e-6)
    # One byte per token: bits per byte is the loss in bits.
    assert m["eval_bits_per_byte"] == pytest.approx(m["eval_loss"] / np.log(2), rel=1e-6)
  assert glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    saved = json.load(f)
  assert saved["train"]["steps"] == 6 and saved["model"]["preset"] == "tiny"
  assert result["step"] == 6 and result["entropy_rate"] > 0
  # train.profile_steps="2:4": one profiler trace in workdir/profile.
  assert len(glob.glob(os.path.join(workdir, "profile", "plugins", "profile", "*",
                                    "*.xplane.pb"))) == 1


def test_resume_continues_exactly(short_run, make_config, tmp_path):
  """A run stopped at step 3 and restarted in its workdir matches the uninterrupted run."""
  _, full_workdir, _ = short_run
  workdir = str(tmp_path)
  overrides = dict(train__eval_every=3, train__checkpoint_every=3)
  train_and_evaluate(make_config(train__steps=3, **overrides), workdir)
  result = train_and_evaluate(make_config(**overrides), workdir)
  resumed, full = train_losses(workdir), train_losses(full_workdir)
  assert sorted(resumed) == list(range(1, 7))  # steps 4-6 appended, 1-3 not repeated
  for step in range(1, 7):
    assert resumed[step] == full[step], step
  assert result["step"] == 6
  # Running again after the last step trains nothing and keeps the checkpoint.
  train_and_evaluate(make_config(**overrides), workdir)
  assert len(train_losses(workdir)) == 6


def test_gradient_accumulation_matches_the_full_batch(short_run, make_config, tmp_path):
  _, full_workdir, _ = short_run
  train_and_evaluate(make_config(train__grad_accum=4, train__steps=3), str(tmp_path))
  accumulated, full = train_losses(str(tmp_path)), train_losses(full_workdir)
  for step in (1, 2, 3):
    assert accumulated[step] == pytest.approx(full[step], rel=1e-5)


def test_adafactor_and_z_loss(make_config, tmp_path):
  result = train_and_evaluate(make_config(train__optimizer="adafactor", train__z_loss=1e-4),
                              str(tmp_path))
  losses = train_losses(str(tmp_path))
  assert losses[6] < losses[1]
  assert result["z_loss"] > 0


def test_training_approaches_the_entropy_bound(make_config, tmp_path):
  """On a Markov source no model can beat the entropy rate; a good one gets close."""
  config = make_config(train__steps=150, train__batch_size=16, train__seq_len=64,
                       train__warmup_steps=15, train__log_every=50, train__eval_every=150,
                       train__eval_batches=8, data__source="synthetic:markov:states=8")
  result = train_and_evaluate(config, str(tmp_path))
  bound = result["entropy_rate"]
  initial = train_losses(str(tmp_path))[50]
  assert initial > bound
  assert bound - 0.05 < result["eval_loss"] < bound + 0.05, (result["eval_loss"], bound)


@pytest.mark.parametrize("overrides, message", [
    (dict(train__grad_accum=3), "train.grad_accum=3"),
    (dict(train__seq_len=4096), "model.max_seq_len"),
    (dict(model__vocab_size=100), "model.vocab_size=100"),
    (dict(mesh__data=2), "mesh.data"),
    (dict(model__num_kv_heads=3), "model.num_kv_heads=3"),
    (dict(train__steps=0), "train.steps=0"),
    (dict(model__preset="llama9"), "model.preset='llama9'"),
    (dict(data__source="text:/no/such/*.txt"), "data.source"),
    (dict(train__profile_steps="15:10"), "train.profile_steps='15:10'"),
    (dict(model__attention="flash"), "model.attention='flash'"),
    (dict(model__loss_chunk=-1), "model.loss_chunk=-1"),
])
def test_bad_configs_fail_before_training(make_config, tmp_path, overrides, message):
  with pytest.raises((ValueError, FileNotFoundError)) as info:
    train_and_evaluate(make_config(**overrides), str(tmp_path / "run"))
  assert message in str(info.value)
  assert not os.path.exists(tmp_path / "run" / "checkpoints")
