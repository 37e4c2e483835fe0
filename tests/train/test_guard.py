"""The update guard: real faults (a learning rate of 1e30, a switch of corpus) and its math."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lm import config as config_lib
from lm.train import checkpoint as checkpoint_lib
from lm.train import guard as guard_lib
from lm.stages import train_and_evaluate

# Warmup from 0 over one step: step 2 is the first with lr 1e30. Its update leaves parameters
# of ~1e30, finite, but the gradient of step 3 is not: step 2 is the last good update.
FAULT = dict(train__lr=1e30, train__warmup_steps=1, train__checkpoint_every=1,
             train__keep_checkpoints=10)


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [m for m in map(json.loads, f) if "loss" in m]


def checkpoints(workdir):
  return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())


def saved_guard(workdir, step):
  with ocp.PyTreeCheckpointer() as checkpointer:
    state = checkpointer.restore(os.path.join(workdir, "checkpoints", str(step), "state"))
  return {name: np.asarray(value) for name, value in state["guard"].items()}


@pytest.fixture(scope="module")
def stop_run(tmp_path_factory, data_cache):
  """The faulty run with on_nonfinite='stop' (make_config's tiny run, built here for a module
  fixture): (workdir, the error it raised)."""
  config = config_lib.base_config()
  config.data.cache_dir = data_cache
  config.data.source = "synthetic:markov"
  t = config.train
  t.steps, t.batch_size, t.seq_len, t.warmup_steps = 6, 8, 32, 1
  t.lr, t.checkpoint_every, t.keep_checkpoints = 1e30, 1, 10
  t.log_every, t.eval_every = 1, 1000
  config.data.eval_documents = 1
  t.on_nonfinite = "stop"
  workdir = str(tmp_path_factory.mktemp("stop"))
  with pytest.raises(guard_lib.NonFiniteError) as info:
    train_and_evaluate(config_lib.lock(config), workdir)
  return workdir, str(info.value)


def test_stop_mode_raises_before_saving_the_fault(stop_run):
  workdir, message = stop_run
  assert "Non-finite loss or gradient norm at step 3" in message
  assert "train.on_nonfinite='stop'" in message and "newest checkpoint (step 2)" in message
  assert checkpoints(workdir) == [1, 2]  # found at step 3, before its checkpoint
  assert [m["skipped"] for m in read_metrics(workdir)] == [0, 0, 1]  # step 3 is logged


def test_skip_mode_refuses_every_nonfinite_update(stop_run, make_config, tmp_path):
  result = train_and_evaluate(make_config(**FAULT), str(tmp_path))
  metrics = read_metrics(str(tmp_path))
  assert [m["skipped"] for m in metrics] == [0, 0, 1, 1, 1, 1]
  assert [m["skipped_updates"] for m in metrics] == [0, 0, 1, 2, 3, 4]
  assert not np.isfinite(metrics[2]["grad_norm"])
  assert result["step"] == 6 and result["skipped_updates"] == 4
  assert checkpoints(str(tmp_path))[-1] == 6  # the step counter moved on
  # The newest parameters are those of the last good update: the stop run's checkpoint 2.
  _, _, params = checkpoint_lib.load_for_inference(str(tmp_path))
  _, _, good = checkpoint_lib.load_for_inference(stop_run[0])
  for leaf, good_leaf in zip(jax.tree.leaves(params), jax.tree.leaves(good)):
    assert np.isfinite(leaf).all()
    np.testing.assert_array_equal(leaf, good_leaf)
  assert saved_guard(str(tmp_path), 6)["skipped"] == 4


def test_a_loss_spike_is_skipped_and_the_statistics_survive_resume(make_config, tmp_path):
  """Six steps on a two-letter Markov chain, then a resume on a 26-letter one: its loss is
  above mean + 1 std of the guard's statistics, so every resumed update is refused."""
  workdir = str(tmp_path)
  spike = dict(train__lr=1e-2, train__spike_sigma=1.0, train__spike_window=3)
  train_and_evaluate(make_config(data__source="synthetic:markov:states=2,length=200000",
                                 **spike), workdir)
  before = saved_guard(workdir, 6)
  losses = [m["loss"] for m in read_metrics(workdir)]
  mean, var = 0.0, 0.0  # Welford with weight 1/n for n <= window, then 1/window
  for n, loss in enumerate(losses, start=1):
    alpha = 1.0 / min(n, 3)
    delta = loss - mean
    mean, var = mean + alpha * delta, (1 - alpha) * (var + alpha * delta * delta)
  assert before["loss_mean"] == pytest.approx(mean, rel=1e-5)
  assert before["loss_var"] == pytest.approx(var, rel=1e-5)
  assert before["skipped"] == 0  # a falling loss is never a spike

  train_and_evaluate(make_config(data__source="synthetic:markov:states=26,seed=1,length=200000",
                                 train__steps=8, **spike), workdir)
  resumed = read_metrics(workdir)[6:]
  assert [m["loss"] > mean + np.sqrt(var) for m in resumed] == [True, True]
  assert [(m["skipped"], m["skipped_updates"]) for m in resumed] == [(1, 1), (1, 2)]
  after = saved_guard(workdir, 8)
  assert after["skipped"] == 2
  assert (after["loss_mean"], after["loss_var"]) == (before["loss_mean"], before["loss_var"])


def test_guard_statistics_decisions_and_stop():
  guard = guard_lib.init()
  losses = [5.0, 4.0, 4.5, 4.2, 4.4, 9.0, float("nan"), 4.3]
  decisions = []
  for step, loss in enumerate(losses):
    apply, guard = guard_lib.check(guard, jnp.int32(step), jnp.float32(loss), jnp.float32(1.0),
                                   spike_sigma=3.0, spike_window=4, stop=False)
    decisions.append(bool(apply))
    if step == 3:  # the first `window` updates: the exact mean and population variance
      assert float(guard.loss_mean) == pytest.approx(np.mean(losses[:4]), rel=1e-6)
      assert float(guard.loss_var) == pytest.approx(np.var(losses[:4]), rel=1e-5)
  assert decisions == [True] * 5 + [False, False, True]  # the spike and the NaN are refused
  assert int(guard.skipped) == 2 and int(guard.first_nonfinite) == 7

  # Stop mode: frozen from the first fault on, even for later finite losses.
  guard = guard_lib.init()
  for step, loss in enumerate([5.0, float("inf"), 4.0]):
    apply, guard = guard_lib.check(guard, jnp.int32(step), jnp.float32(loss), jnp.float32(1.0),
                                   spike_sigma=0.0, spike_window=4, stop=True)
  assert not bool(apply) and int(guard.first_nonfinite) == 2 and int(guard.skipped) == 2
  assert float(guard.loss_mean) == 5.0  # refused losses never enter the statistics
  # A non-finite gradient norm alone is a fault too.
  apply, _ = guard_lib.check(guard_lib.init(), jnp.int32(0), jnp.float32(1.0),
                             jnp.float32(np.nan), spike_sigma=0.0, spike_window=4, stop=False)
  assert not bool(apply)


def test_a_refused_update_keeps_the_moments_and_advances_the_counters():
  old = {"count": jnp.int32(4), "mu": jnp.ones(3)}
  new = {"count": jnp.int32(5), "mu": jnp.full(3, np.nan)}
  kept = guard_lib.counters_only(new, old)
  assert int(kept["count"]) == 5 and (np.asarray(kept["mu"]) == 1).all()


@pytest.mark.parametrize("overrides, message", [
    (dict(train__on_nonfinite="ignore"), "train.on_nonfinite='ignore'"),
    (dict(train__spike_sigma=-1.0), "train.spike_sigma=-1.0"),
    (dict(train__spike_window=0), "train.spike_window=0"),
])
def test_bad_guard_configs_fail_before_training(make_config, tmp_path, overrides, message):
  with pytest.raises(ValueError, match=message.replace(".", r"\.")):
    train_and_evaluate(make_config(**overrides), str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "checkpoints")
