"""Sharded and multi-host training on CPU devices: the same losses on every layout.

Each layout runs in a fresh process whose device count is set through XLA_FLAGS before
JAX starts; the single-device reference runs in the test process itself.
"""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import pytest

from tests.parallel import worker

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MESHES = [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 4, 2)]


def start_worker(spec: dict, devices: int) -> subprocess.Popen:
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
         "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
  return subprocess.Popen([sys.executable, WORKER, json.dumps(spec)], env=env, cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> str:
  out, err = process.communicate(timeout=600)
  assert process.returncode == 0, f"worker failed:\n{out}\n{err[-5000:]}"
  return out


def losses(workdir) -> dict[int, float]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def eval_metrics(workdir, step: int) -> dict:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return next(r for r in map(json.loads, f) if r["step"] == step and "eval_loss" in r)


def mesh_overrides(mesh, cache):
  # Two input streams everywhere: the batches of one and of two processes are the same.
  return {"mesh.data": mesh[0], "mesh.fsdp": mesh[1], "mesh.tensor": mesh[2],
          "data.cache_dir": cache, "data.shards": 2}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_cache):
  """Five steps on one device, in this process."""
  assert jax.device_count() == 1
  workdir = str(tmp_path_factory.mktemp("single_device"))
  jax_config = worker.make_config(mesh_overrides((1, 1, 1), data_cache))
  from lm.stages import train_and_evaluate  # pylint: disable=import-outside-toplevel
  train_and_evaluate(jax_config, workdir)
  return losses(workdir)


def test_every_mesh_gives_the_single_device_losses(reference, tmp_path, data_cache):
  runs = [{"workdir": str(tmp_path / "x".join(map(str, mesh))),
           "overrides": mesh_overrides(mesh, data_cache)} for mesh in MESHES]
  finish(start_worker({"runs": runs}, devices=8))
  assert len(reference) == 5
  for mesh, run in zip(MESHES, runs):
    got = losses(run["workdir"])
    for step, expected in reference.items():
      assert got[step] == pytest.approx(expected, rel=1e-5), (mesh, step)


PAIR_STAGES = {"reward": {"stage": "reward"}, "dpo": {"stage": "dpo", "dpo.loss": "sigmoid"}}


def pair_overrides(stage, mesh, cache):
  return {**mesh_overrides(mesh, cache), **PAIR_STAGES[stage],
          "data.source": "builtin:preferences", "train.seq_len": 64, "train.steps": 3}


def test_preference_stages_on_8_devices_give_the_single_device_losses(tmp_path, data_cache):
  """The reward model and DPO (a frozen reference tree beside the trained one) on a data x
  fsdp x tensor mesh of 8 CPU devices: the single-device losses and metrics."""
  from lm.stages import train_and_evaluate  # pylint: disable=import-outside-toplevel
  runs = [{"workdir": str(tmp_path / f"{stage}_8"),
           "overrides": pair_overrides(stage, (2, 2, 2), data_cache)} for stage in PAIR_STAGES]
  process = start_worker({"runs": runs}, devices=8)
  for stage in PAIR_STAGES:
    train_and_evaluate(worker.make_config(pair_overrides(stage, (1, 1, 1), data_cache)),
                       str(tmp_path / f"{stage}_1"))
  finish(process)
  for stage in PAIR_STAGES:
    with open(tmp_path / f"{stage}_1" / "metrics.jsonl", encoding="utf-8") as f:
      single = [r for r in map(json.loads, f) if "loss" in r]
    with open(tmp_path / f"{stage}_8" / "metrics.jsonl", encoding="utf-8") as f:
      sharded = [r for r in map(json.loads, f) if "loss" in r]
    assert [r["step"] for r in single] == [r["step"] for r in sharded] == [1, 2, 3]
    names = ["loss", "grad_norm"] + (["accuracy", "margin"] if stage == "reward" else
                                     ["rewards/margins", "logps/chosen", "logps/rejected"])
    for one, eight in zip(single, sharded):
      for name in names:
        assert eight[name] == pytest.approx(one[name], rel=1e-5, abs=1e-6), (stage, name)
    assert single[-1]["loss"] != single[0]["loss"]  # it trained


def test_fsdp_puts_an_eighth_of_every_large_array_on_each_device(data_cache):
  out = finish(start_worker({"shards": mesh_overrides((1, 8, 1), data_cache)}, devices=8))
  layout = json.loads(out.split("LAYOUT ", 1)[1])
  large = {path: leaf for path, leaf in layout.items()
           if len(leaf["shape"]) >= 2 and math.prod(leaf["shape"]) >= 4096}
  params = [p for p in large if ".params" in p]
  moments = [p for p in large if ".opt_state" in p]
  assert len(params) >= 6 and len(moments) == 2 * len(params)  # AdamW: mu and nu
  for path, leaf in large.items():
    assert leaf["devices"] == 8, path
    for shard in leaf["shard_shapes"]:
      assert math.prod(shard) * 8 == math.prod(leaf["shape"]), (path, leaf)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_slices_match_one_process_and_resume_on_one_bitwise(tmp_path, data_cache):
  """2 processes x 2 devices as 2 slices (mesh.dcn_data=2: DCN x ICI through
  create_hybrid_device_mesh) == 1 process x 4 devices on the same (data 2, fsdp 2) layout and
  data.shards; the 2-slice checkpoint then restores on 1 process bit for bit and trains on."""
  two_slices = {**mesh_overrides((1, 2, 1), data_cache), "mesh.dcn_data": 2}
  one_process = mesh_overrides((2, 2, 1), data_cache)
  multi, single = str(tmp_path / "multi"), str(tmp_path / "single")
  address = f"127.0.0.1:{free_port()}"
  workers = [start_worker({"distributed": [address, 2, i],
                           "runs": [{"workdir": multi, "overrides": two_slices}],
                           "digest": {"workdir": multi, "overrides": two_slices}}, devices=2)
             for i in range(2)]
  # The reference stops at 5 and resumes to 7 too: the schedule depends on train.steps.
  reference = start_worker({"runs": [{"workdir": single, "overrides": one_process},
                                     {"workdir": single,
                                      "overrides": {**one_process, "train.steps": 7}}]},
                           devices=4)
  outputs = [finish(process) for process in workers + [reference]]
  assert "'data': 2, 'fsdp': 2" in outputs[0]  # the mesh line: 2 slices x (1, 2)
  two_process, reference_losses = losses(multi), losses(single)
  assert sorted(two_process) == [1, 2, 3, 4, 5]
  for step, loss in two_process.items():
    assert loss == pytest.approx(reference_losses[step], rel=1e-5), step
  assert "5" in os.listdir(os.path.join(multi, "checkpoints"))
  # Each process evaluates its rows of the same global eval batches.
  evals = [eval_metrics(w, 5) for w in (multi, single)]
  assert evals[0]["eval_tokens"] == evals[1]["eval_tokens"] == 10_001  # one document of 10k
  assert evals[0]["eval_loss"] == pytest.approx(evals[1]["eval_loss"], rel=1e-5)

  # The parameters the two slices restore (gathered) are those one device restores.
  saved = outputs[0].split("DIGEST ", 1)[1].split()[0]
  single_device = mesh_overrides((1, 1, 1), data_cache)
  assert worker.params_digest(multi, single_device) == saved

  # Resume the two-slice checkpoint on this process's single device and train on.
  from lm.stages import train_and_evaluate  # pylint: disable=import-outside-toplevel
  train_and_evaluate(worker.make_config({**single_device, "train.steps": 7}), multi)
  resumed = losses(multi)
  assert sorted(resumed) == [1, 2, 3, 4, 5, 6, 7]
  for step in (6, 7):
    assert resumed[step] == pytest.approx(reference_losses[step], rel=1e-5), step


def test_sigterm_on_one_host_stops_every_host_at_the_same_step(tmp_path, data_cache):
  """JAX's preemption service hears SIGTERM on process 0; both processes save one step."""
  workdir = str(tmp_path)
  address = f"127.0.0.1:{free_port()}"
  overrides = {**mesh_overrides((2, 1, 1), data_cache), "train.steps": 100000,
               "train.checkpoint_every": 1000}
  workers = [start_worker({"distributed": [address, 2, i],
                           "runs": [{"workdir": workdir, "overrides": overrides}]}, devices=1)
             for i in range(2)]
  deadline = time.time() + 300
  def logged_steps() -> int:
    try:
      return len(losses(workdir))
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or mid-line
      return 0

  while logged_steps() < 3:
    assert time.time() < deadline and all(w.poll() is None for w in workers)
    time.sleep(0.1)
  workers[0].send_signal(signal.SIGTERM)
  outputs = [finish(w) for w in workers]  # both exit 0
  stopped = max(losses(workdir))
  assert f"Stopped at step {stopped} as asked" in outputs[0]
  assert os.listdir(os.path.join(workdir, "checkpoints")) == [str(stopped)]
