"""lm sweep: grid and random expansion, run names, skip-finished and resume-interrupted runs
through the real training loop, and TPU launch commands that tpu_scripts/launch.sh accepts."""

import json
import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from lm.experiments import sweep as sweep_lib
from lm.train import preemption
# pylint: disable-next=unused-import
from tests.tpu_scripts.test_dry_run import ROOT, env, printed, remote

# --- expansion --------------------------------------------------------------------------------


def test_product_is_the_full_grid_last_axis_fastest():
  grid = sweep_lib.product(sweep_lib.sweep("train.lr", [1e-3, 3e-3]),
                           [{"model.mlp": "gelu", "model.d_ff": 384}, {}],
                           sweep_lib.sweep("seed", [0, 1]))
  assert grid == [
      {"train.lr": 1e-3, "model.mlp": "gelu", "model.d_ff": 384, "seed": 0},
      {"train.lr": 1e-3, "model.mlp": "gelu", "model.d_ff": 384, "seed": 1},
      {"train.lr": 1e-3, "seed": 0}, {"train.lr": 1e-3, "seed": 1},
      {"train.lr": 3e-3, "model.mlp": "gelu", "model.d_ff": 384, "seed": 0},
      {"train.lr": 3e-3, "model.mlp": "gelu", "model.d_ff": 384, "seed": 1},
      {"train.lr": 3e-3, "seed": 0}, {"train.lr": 3e-3, "seed": 1}]


def test_zipped_and_random_search():
  assert sweep_lib.zipped(sweep_lib.sweep("model.d_model", [64, 128]),
                          sweep_lib.sweep("model.num_heads", [2, 4])) == [
      {"model.d_model": 64, "model.num_heads": 2}, {"model.d_model": 128, "model.num_heads": 4}]
  with pytest.raises(ValueError, match="different lengths"):
    sweep_lib.zipped(sweep_lib.sweep("a", [1]), sweep_lib.sweep("b", [1, 2]))
  space = {"train.lr": sweep_lib.LogUniform(1e-4, 1e-2),
           "train.optimizer": sweep_lib.Choice(("adamw", "adafactor")), "seed": 0}
  points = sweep_lib.random_search(50, space, rng_seed=7)
  assert points == sweep_lib.random_search(50, space, rng_seed=7)  # reproducible
  assert points != sweep_lib.random_search(50, space, rng_seed=8)
  lrs = [p["train.lr"] for p in points]
  assert all(1e-4 <= lr <= 1e-2 for lr in lrs) and min(lrs) < 1e-3 < max(lrs)
  assert {p["train.optimizer"] for p in points} == {"adamw", "adafactor"}
  assert all(p["seed"] == 0 and len(p) == 3 for p in points)


# --- names and configs ------------------------------------------------------------------------

def test_run_names_are_short_readable_and_unique(make_config, tmp_path):
  overrides = [{"train.lr": 3e-4, "train.optimizer": "adafactor", "seed": 2},
               {"label": "GELU, matched", "model.mlp": "gelu", "model.d_ff": 384, "seed": 0},
               {"model.tie_embeddings": True}, {}]
  runs = sweep_lib.plan(make_config(), overrides, str(tmp_path / "study"))
  assert [r.name for r in runs] == ["lr-0.0003__optimizer-adafactor__seed-2",
                                    "GELU_matched__seed-0", "tie_embeddings-True", "base"]
  assert runs[0].workdir == str(tmp_path / "study" / "lr-0.0003__optimizer-adafactor__seed-2")
  assert [r.group for r in runs] == ["lr=0.0003, optimizer=adafactor", "GELU, matched",
                                     "tie_embeddings=True", "base"]
  for run in runs:  # what tpu_scripts accepts as a --run name (common.sh check_word)
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", run.name)
  assert (runs[0].config.train.lr, runs[0].config.train.optimizer, runs[0].config.seed) == (
      3e-4, "adafactor", 2)
  assert runs[1].config.model.mlp == "gelu" and runs[1].config.model.d_ff == 384
  assert runs[3].config.to_dict() == make_config().to_dict()
  # Two keys with one last component keep their whole paths.
  assert sweep_lib.short_keys(["train.b1", "model.b1", "seed"]) == {
      "model.b1": "model.b1", "train.b1": "train.b1", "seed": "seed"}


@pytest.mark.parametrize("overrides, message", [
    ([{"train.lrr": 1.0}], "'train.lrr'=1.0 does not fit the config"),
    ([{"modell.mlp": "gelu"}], "'modell.mlp'"),
    ([{"seed": 1}, {"seed": 1}], "runs 0 and 1 are both named 'seed-1'"),
])
def test_bad_sweeps_name_the_run_and_key(make_config, overrides, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    sweep_lib.plan(make_config(), overrides, "w", "s.py")


def test_load_sweep_reads_get_sweep_and_report(tmp_path):
  path = tmp_path / "s.py"
  path.write_text("from lm.experiments.sweep import sweep\nREPORT = dict(x='train.lr')\n"
                  "def get_sweep(arg):\n  return sweep('train.lr', [float(arg), 2 * float(arg)])\n")
  assert sweep_lib.load_sweep(f"{path}:0.5") == (
      [{"train.lr": 0.5}, {"train.lr": 1.0}], {"x": "train.lr"})
  path.write_text("def get_sweep(arg):\n  return {'train.lr': 1}\n")
  with pytest.raises(ValueError, match="non-empty list of dicts"):
    sweep_lib.load_sweep(str(path))
  with pytest.raises(FileNotFoundError, match="no such file"):
    sweep_lib.load_sweep(str(tmp_path / "missing.py"))


# --- running: skip finished, resume interrupted -----------------------------------------------

def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  steps = [r["step"] for r in records if "loss" in r]
  assert len(steps) == len(set(steps)), "a step was logged twice"
  return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_interrupted_run_resumes_exactly_and_finished_runs_are_skipped(swept):
  _, (a, b), calls, statuses, checkpoints_b = swept
  # First call: "a" finished, "b" stopped at step 3 (its checkpoint), which ended the sweep.
  assert calls[0] == ["a", "b"]
  assert statuses == ["finished", "partial"] and checkpoints_b == ["3"]
  # Second call: "a" skipped, "b" resumed from step 3 and matches the uninterrupted "a".
  assert calls[1] == ["b"]
  assert sorted(_losses(b.workdir)) == list(range(1, 7))
  assert _losses(b.workdir) == _losses(a.workdir)
  record = sweep_lib.read_record(b.workdir)
  assert [i["last_step"] for i in record["invocations"]] == [3, 6] and record["finished"]
  assert record["wall_seconds"] == pytest.approx(sum(i["seconds"] for i in record["invocations"]))
  # Third call: both finished, nothing trained.
  assert calls[2] == [] and [sweep_lib.status(r) for r in (a, b)] == ["finished", "finished"]


def test_a_run_that_another_process_trains_is_skipped(make_config, tmp_path):
  [run] = sweep_lib.plan(make_config(), [{"seed": 3}], str(tmp_path))
  other = subprocess.Popen(["sleep", "60"])
  try:
    sweep_lib.write_record(run.workdir, {"pid": other.pid, "host": socket.gethostname(),
                                         "finished": False, "invocations": []})
    assert sweep_lib.status(run) == "running"
    assert sweep_lib.run_all([run], lambda *_: pytest.fail("trained"), log=lambda _: None) == []
  finally:
    other.kill()
    other.wait()
  assert sweep_lib.status(run) == "partial"  # that process has gone: resume it here
  trained = []
  assert sweep_lib.run_all([run], lambda c, w: trained.append(w) or {"step": 6},
                           log=lambda _: None) == ["seed-3"]
  assert trained == [run.workdir] and sweep_lib.read_record(run.workdir)["pid"] is None


def test_a_signal_during_a_runs_last_save_ends_the_sweep(make_config, tmp_path):
  runs = sweep_lib.plan(make_config(), [{"seed": 1}, {"seed": 2}], str(tmp_path))
  trained = []

  def train(config, workdir):  # the signal arrives after the last step: the run still ends
    trained.append(workdir)
    with preemption.StopRequest():
      os.kill(os.getpid(), signal.SIGTERM)
    return {"step": 6}

  assert sweep_lib.run_all(runs, train, log=lambda _: None) == ["seed-1"]
  assert trained == [runs[0].workdir]
  assert [sweep_lib.status(r) for r in runs] == ["finished", "new"]
  assert sweep_lib.run_all(runs, lambda c, w: {"step": 6}, log=lambda _: None) == ["seed-2"]


# --- Cloud TPU --------------------------------------------------------------------------------

def test_emit_tpu_writes_launch_commands_that_launch_sh_accepts(env, tmp_path):
  sweep_file = tmp_path / "s.py"
  sweep_file.write_text(
      "from lm.experiments.sweep import product, sweep\n"
      "def get_sweep(arg):\n"
      "  return product([{'label': 'gelu', 'model.mlp': 'gelu'}, {'train.lr': 0.01}],\n"
      "                 sweep('seed', [0, 1]))\n")
  script = tmp_path / "launch_sweep.sh"
  result = subprocess.run(
      [sys.executable, "-m", "lm", "sweep", "--config=configs/tiny.py", f"--sweep={sweep_file}",
       "--workdir=gs://bucket/study", "--emit=tpu", f"--output={script}",
       "--launch_args=--name=lm-v5p-{i} --zone=us-east5-a --dry-run",
       "--config.train.steps=50", "--config.train.lr=0.001"],
      capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout == script.read_text() and os.access(script, os.X_OK)
  ran = subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=ROOT, env=env,
                       timeout=60)
  assert ran.returncode == 0, ran.stderr
  assert not os.path.exists(env["FAKE_GCLOUD_MARKER"]), "--dry-run executed gcloud"
  commands = printed(ran.stdout)
  expected = [  # (slice, run, the lm train flags after the workdir)
      (0, "gelu__seed-0", ["--config.train.steps=50", "--config.train.lr=0.001",
                           "--config.model.mlp=gelu", "--config.seed=0"]),
      (1, "gelu__seed-1", ["--config.train.steps=50", "--config.train.lr=0.001",
                           "--config.model.mlp=gelu", "--config.seed=1"]),
      (2, "lr-0.01__seed-0", ["--config.train.steps=50", "--config.train.lr=0.01",
                              "--config.seed=0"]),
      (3, "lr-0.01__seed-1", ["--config.train.steps=50", "--config.train.lr=0.01",
                              "--config.seed=1"])]
  assert len(commands) == len(expected)
  for command, (i, name, flags) in zip(commands, expected):
    assert command[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", f"lm-v5p-{i}"]
    steps = remote(command).split(" && ")
    assert ("set -- ~/lm_venv/bin/lm train --distributed --config=configs/tiny.py "
            f"--workdir=gs://bucket/study/{name} " + " ".join(flags)) in steps
    assert any(f">> ~/lm_logs/{name}.log" in s for s in steps)
