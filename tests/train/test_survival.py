"""Training that survives: kill -9 and rerun, SIGTERM, broken checkpoints, operator errors.

Kills and signals go to real `lm train` processes; the rest runs train_and_evaluate here.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lm.stages import train_and_evaluate
from lm.train import workdir as workdir_lib
from tests.metrics_log import records

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--config=configs/tiny.py:synthetic", "--config.train.batch_size=8",
        "--config.train.seq_len=32", "--config.train.log_every=1",
        "--config.train.eval_every=1000", "--config.data.eval_documents=1",
        "--config.train.warmup_steps=2"]


def train_command(workdir, cache, *overrides) -> list[str]:
  return [sys.executable, "-m", "lm", "train", f"--workdir={workdir}", *TINY,
          f"--config.data.cache_dir={cache}", *overrides]


def start(command) -> subprocess.Popen:
  return subprocess.Popen(command, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def losses(workdir) -> dict[int, float]:
  """step -> loss; fails if a step was written twice."""
  out = {}
  for record in records(workdir):
    if "loss" in record:
      assert record["step"] not in out, f"step {record['step']} written twice"
      out[record["step"]] = record["loss"]
  return out


def wait_for_step(process: subprocess.Popen, workdir, step: int, timeout: float = 240) -> None:
  deadline = time.time() + timeout
  while max(losses(workdir), default=0) < step:
    assert process.poll() is None, process.communicate()
    assert time.time() < deadline, f"no step {step} within {timeout}s"
    time.sleep(0.05)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_cache):
  """The 12 steps of an uninterrupted run: the reference every interrupted run must equal."""
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  subprocess.run(train_command(workdir, data_cache, "--config.train.steps=12",
                               "--config.train.checkpoint_every=2"),
                 cwd=ROOT, check=True, capture_output=True, timeout=600)
  return losses(workdir)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_9_at_a_random_step_then_rerun_gives_the_same_losses(
    uninterrupted, tmp_path, data_cache, seed):
  """SIGKILL lands anywhere (mid-step, mid-save, mid-write); the rerun resumes from the newest
  complete checkpoint and its metrics.jsonl equals the uninterrupted run's, bit for bit."""
  kill_at = int(np.random.default_rng(seed).integers(2, 11))
  command = train_command(tmp_path, data_cache, "--config.train.steps=12",
                          "--config.train.checkpoint_every=2")
  process = start(command)
  wait_for_step(process, tmp_path, kill_at)
  process.kill()
  process.wait()
  # Killed by the signal, not finished first (a run that ended would leave nothing to test).
  assert process.returncode == -signal.SIGKILL, process.returncode
  rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "Resuming from checkpoint at step" in rerun.stdout or kill_at < 2
  assert losses(tmp_path) == uninterrupted  # every step once, equal bit for bit


PAIRS = ["--config.data.source=builtin:preferences", "--config.train.seq_len=64",
         "--config.train.steps=20", "--config.train.checkpoint_every=2"]


@pytest.mark.parametrize("stage", ["reward", "dpo"])
def test_preference_stages_resume_after_kill_9_bitwise(tmp_path, data_cache, stage):
  """The reward model and DPO (whose frozen reference is checkpointed beside the policy):
  killed once the checkpoint of step 2 is written, rerun, every step's metrics equal an uninterrupted run's."""
  command = lambda workdir: train_command(workdir, data_cache, f"--config.stage={stage}",
                                          *PAIRS)
  whole = tmp_path / "whole"
  subprocess.run(command(whole), cwd=ROOT, check=True, capture_output=True, timeout=600)
  process = start(command(tmp_path / "killed"))
  wait_for_step(process, tmp_path / "killed", 3)
  while not os.path.isdir(tmp_path / "killed" / "checkpoints" / "2"):  # renamed when complete
    assert process.poll() is None
    time.sleep(0.01)
  process.kill()
  assert process.wait() == -signal.SIGKILL  # killed mid-run, not finished
  assert max(losses(tmp_path / "killed")) < 20
  rerun = subprocess.run(command(tmp_path / "killed"), cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "Resuming from checkpoint at step" in rerun.stdout
  def exact(workdir):  # every metric but the timings, at each step and the final eval
    return [{k: v for k, v in r.items() if "per_sec" not in k and k != "mfu"}
            for r in records(workdir) if "loss" in r or "eval_loss" in r]
  assert exact(tmp_path / "killed") == exact(whole) and len(exact(whole)) == 21


def test_sigterm_saves_and_exits_0_and_the_rerun_resumes_there(tmp_path, data_cache):
  command = train_command(tmp_path, data_cache, "--config.train.steps=100000",
                          "--config.train.checkpoint_every=1000")
  process = start(command)
  wait_for_step(process, tmp_path, 3)
  process.send_signal(signal.SIGTERM)
  out, err = process.communicate(timeout=120)
  assert process.returncode == 0, err[-3000:]
  stopped = max(losses(tmp_path))
  assert f"Stopped at step {stopped} as asked" in out
  assert os.listdir(tmp_path / "checkpoints") == [str(stopped)]

  rerun = subprocess.run(train_command(tmp_path, data_cache,
                                       f"--config.train.steps={stopped + 2}"),
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert f"Resuming from checkpoint at step {stopped}" in rerun.stdout
  assert sorted(losses(tmp_path)) == list(range(1, stopped + 3))


def test_a_second_signal_exits_at_once(tmp_path, data_cache):
  process = start(train_command(tmp_path, data_cache, "--config.train.steps=100000",
                                "--config.train.checkpoint_every=1000"))
  wait_for_step(process, tmp_path, 2)
  process.send_signal(signal.SIGINT)
  process.send_signal(signal.SIGTERM)
  process.communicate(timeout=60)
  assert process.returncode == -signal.SIGTERM  # killed by the signal, no clean exit
  assert not os.path.exists(tmp_path / "checkpoints") or not os.listdir(tmp_path / "checkpoints")


def largest_file(directory) -> str:
  files = [os.path.join(root, name) for root, _, names in os.walk(directory) for name in names]
  return max(files, key=os.path.getsize)


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(
    make_config, tmp_path, caplog):
  full = str(tmp_path / "full")
  train_and_evaluate(make_config(train__checkpoint_every=2), full)
  workdir = str(tmp_path / "run")
  train_and_evaluate(make_config(train__steps=4, train__checkpoint_every=2), workdir)
  victim = largest_file(os.path.join(workdir, "checkpoints", "4", "state"))
  with open(victim, "r+b") as f:
    f.truncate(os.path.getsize(victim) // 2)

  train_and_evaluate(make_config(train__checkpoint_every=2), workdir)
  warning = next(r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage())
  assert os.path.join(workdir, "checkpoints", "4") in warning
  assert os.listdir(os.path.join(workdir, "unreadable_checkpoints"))[0].startswith("4-")
  assert losses(workdir) == losses(full)  # steps 3 and 4 retrained from checkpoint 2, equal


def test_the_workdir_must_be_writable(make_config, tmp_path):
  (tmp_path / "a_file").write_text("")
  with pytest.raises(OSError, match=r"--workdir=.*a_file/run cannot be written"):
    train_and_evaluate(make_config(), str(tmp_path / "a_file" / "run"))


def test_a_disk_without_room_for_one_checkpoint_fails_before_training(make_config, tmp_path):
  free = shutil.disk_usage(tmp_path).free
  vocab = int(2 * free / (12 * 64))  # embedding + output head + AdamW moments > 2x free space
  with pytest.raises(OSError, match=r"GB free, but one checkpoint of this run .* takes"):
    train_and_evaluate(make_config(model__vocab_size=vocab), str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_a_changed_model_is_refused_and_a_changed_lr_is_logged(make_config, tmp_path, caplog):
  workdir = str(tmp_path)
  train_and_evaluate(make_config(train__steps=2, train__checkpoint_every=2), workdir)
  with pytest.raises(ValueError, match=r"step 2 .* does not fit .*model.d_model: None -> 96"):
    train_and_evaluate(make_config(train__steps=3, model__d_model=96), workdir)
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["2"]  # nothing lost
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    assert json.load(f)["model"]["d_model"] is None  # still the checkpoint's config

  # The same shapes, another function: refused too, naming every field, unless allowed.
  same_shapes = dict(model__mlp="geglu", model__rope_theta=500_000.0, model__sliding_window=16,
                     model__norm_eps=1e-6)
  with pytest.raises(ValueError, match=r"step 2 .* another model with the same shapes "
                     r"\(model.mlp: 'swiglu' -> 'geglu'; model.norm_eps: 1e-05 -> 1e-06; "
                     r"model.rope_theta: 10000.0 -> 500000.0; model.sliding_window: 0 -> 16\)"
                     r".*--config.train.allow_model_change=True"):
    train_and_evaluate(make_config(train__steps=3, **same_shapes), workdir)
  # Compute settings are no model change.
  check = workdir_lib.resume_check(json.loads(make_config(model__dtype="bfloat16",
                                                          model__remat="full").to_json()), workdir)
  check(json.loads(make_config().to_json()), 2, True)

  train_and_evaluate(make_config(train__steps=3, train__lr=1e-3, model__norm_eps=1e-6,
                                 train__allow_model_change=True), workdir)
  messages = [r.getMessage() for r in caplog.records]
  assert any("train.lr: 0.003 -> 0.001" in m and "model.norm_eps: None -> 1e-06" in m
             for m in messages)
  assert sorted(losses(workdir)) == [1, 2, 3]


def test_a_missing_config_file_is_named(tmp_path):
  result = subprocess.run([sys.executable, "-m", "lm", "train", "--config=configs/nope.py",
                           f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 2
  assert "--config=configs/nope.py: no such config file" in result.stderr
