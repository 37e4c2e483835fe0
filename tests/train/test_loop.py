"""End-to-end training on tiny configs: loss falls, reaches the entropy bound, resumes."""

import glob
import json
import os
import shutil
import subprocess
import sys
import types

from etils import epath
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import config as config_lib
from lm.data import pipeline
from lm.data import sources
from lm.data import tokenizer as tokenizer_lib
from lm.model import Decoder
from lm.stages import pretrain
from lm.stages import train_and_evaluate
from lm.train.loop import evaluate
from lm.train.loop import make_eval_step

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
  t.log_every, t.eval_every, t.checkpoint_every = 1, 3, 3
  config.data.eval_documents = 1
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


def test_resume_after_a_change_of_data_order_stays_exact(make_config, tmp_path, caplog):
  """A resume that changes the data order reshuffles once (seed + step); resuming again with
  the same command keeps the positions: batches and losses continue as in one run from the
  reshuffle. (A constant learning rate: the runs' step counts differ.)"""
  stepwise, straight = str(tmp_path / "stepwise"), str(tmp_path / "straight")
  constant = dict(train__warmup_steps=0, train__min_lr_ratio=1.0, train__checkpoint_every=2)
  train_and_evaluate(make_config(train__steps=2, **constant), stepwise)
  shutil.copytree(stepwise, straight)
  reordered = dict(data__shuffle_rows=16, **constant)
  train_and_evaluate(make_config(train__steps=4, **reordered), stepwise)
  assert any("does not apply (changed: shuffle_rows 1024 -> 16)" in r.getMessage()
             for r in caplog.records)
  caplog.clear()
  train_and_evaluate(make_config(train__steps=6, **reordered), stepwise)
  assert not any("does not apply" in r.getMessage() for r in caplog.records)
  train_and_evaluate(make_config(train__steps=6, **reordered), straight)
  assert train_losses(stepwise) == train_losses(straight)
  positions = [(epath.Path(w) / "checkpoints" / "6" / "data" / "stream_0.json").read_text()
               for w in (stepwise, straight)]
  assert positions[0] == positions[1] and '"seed": 2' in positions[0]


def test_gradient_accumulation_gives_the_full_batch_gradient_on_2_devices():
  """One SGD step (lr 1) of the train step on 2 data-parallel devices, with 1 and 4
  micro-batches whose loss masks hold 32, 17, 2 and 0 tokens: minus the update equals the
  gradient of the token mean over the whole batch, computed directly (tests/train/
  accum_worker.py). A mean of micro-batch means would be off by far more than rounding."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
         "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
  result = subprocess.run([sys.executable, "-m", "tests.train.accum_worker"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-5000:]
  errors = json.loads(result.stdout.split("RESULT ", 1)[1])
  assert set(errors) == {"1", "4"}
  for accum, error in errors.items():
    assert error < 1e-5, (accum, error)  # relative to the largest gradient entry


def test_adafactor_and_z_loss_train_and_resume_exactly(make_config, tmp_path):
  """Adafactor's per-layer state (lm/train/optim.py) shards, saves and restores: 3 steps, then
  a resumed run to 6, log the losses of 6 uninterrupted steps."""
  def config(steps):
    return make_config(train__optimizer="adafactor", train__z_loss=1e-4, train__steps=steps,
                       train__checkpoint_every=3)
  result = train_and_evaluate(config(6), str(tmp_path / "full"))
  losses = train_losses(str(tmp_path / "full"))
  assert losses[6] < losses[1]
  assert result["z_loss"] > 0
  train_and_evaluate(config(3), str(tmp_path / "resumed"))
  train_and_evaluate(config(6), str(tmp_path / "resumed"))
  assert train_losses(str(tmp_path / "resumed")) == losses


def test_training_approaches_the_entropy_bound(make_config, tmp_path):
  """On a Markov source no model can beat the entropy rate; a good one gets close."""
  config = make_config(train__steps=150, train__batch_size=16, train__seq_len=64,
                       train__warmup_steps=15, train__log_every=50, train__eval_every=150,
                       data__source="synthetic:markov:states=8")
  result = train_and_evaluate(config, str(tmp_path))
  bound = result["entropy_rate"]
  initial = train_losses(str(tmp_path))[50]
  assert initial > bound
  assert bound - 0.05 < result["eval_loss"] < bound + 0.05, (result["eval_loss"], bound)


def test_eval_loss_and_tokens_are_the_same_for_1_2_and_4_shards(make_config):
  """Every topology scores the same held-out tokens: the loss of the same parameters agrees
  exactly, and the token count is that of the documents (<bos> text <eos>: bytes + 1)."""
  config = make_config(data__eval_documents=2)
  tokenizer = tokenizer_lib.get("byte")
  documents = sources.open_source(config.data).eval
  model = Decoder(config_lib.model_config(config))
  params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  stage = pretrain.Stage(config, tokenizer)
  eval_step = jax.jit(make_eval_step(model, stage))
  state = types.SimpleNamespace(params=params, frozen=None)
  results = []
  for shards in (1, 2, 4):  # one process per stream, each with its rows of every batch
    rows = config.train.batch_size // shards
    parts = [pipeline.eval_set(documents, tokenizer, make_config(data__eval_documents=2,
                                                                 data__shards=shards),
                               slice(p * rows, (p + 1) * rows)) for p in range(shards)]
    batches = [{key: np.concatenate([part.batches[i][key] for part in parts]) for key in batch}
               for i, batch in enumerate(parts[0].batches)]
    results.append(evaluate(eval_step, state, batches, parts[0], stage))
  assert results[0] == results[1] == results[2]
  expected_tokens = sum(len(documents[i].encode()) + 1 for i in range(2))
  assert results[0]["eval_tokens"] == expected_tokens
  assert results[0]["eval_bits_per_byte"] == pytest.approx(results[0]["eval_loss"] / np.log(2))


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
