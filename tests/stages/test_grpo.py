"""GRPO (lm/stages/grpo.py) end to end: kill -9 and resume replays the same rollouts bit for
bit; 8 CPU devices give one device's metrics; under LoRA the rollouts decode the adapted
policy; completions are scored at the sampling temperature; bad rl.* fields are named."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import config as config_lib
from lm import stages
from lm.data import tokenizer as tokenizer_lib
from lm.model import Decoder
from lm.model import lora as lora_lib
from lm.parallel import mesh as mesh_lib
from lm.parallel import rules as rules_lib
from lm.rl import rollout as rollout_lib
from lm.stages import train_and_evaluate
from tests.metrics_log import records

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLAGS = ["--config=configs/tiny.py", "--config.stage=grpo",
         "--config.data.source=builtin:tasks:lookup", "--config.train.batch_size=8",
         "--config.train.steps=8", "--config.train.checkpoint_every=4",
         "--config.train.log_every=1", "--config.train.eval_every=1000",
         "--config.train.warmup_steps=1", "--config.train.lr=0.01",
         "--config.data.eval_documents=8", "--config.rl.group_size=2",
         "--config.rl.max_prompt_len=24", "--config.rl.max_new_tokens=6",
         "--config.rl.reward=tests.stages.rl_rewards:letters,exact",
         "--config.rl.samples_every=4"]
TIMINGS = ("per_sec", "mfu")


def command(workdir, cache):
  return [sys.executable, "-m", "lm", "train", f"--workdir={workdir}", *FLAGS,
          f"--config.data.cache_dir={cache}"]


def steps(workdir) -> dict[int, dict]:
  """step -> every metric but the timings."""
  return {r["step"]: {k: v for k, v in r.items() if not any(t in k for t in TIMINGS)}
          for r in records(workdir) if "loss" in r}


def env(devices: int) -> dict:
  return {**os.environ, "JAX_PLATFORMS": "cpu",
          "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory, data_cache):
  """(metrics written before the kill, metrics after the rerun, the rerun's stdout)."""
  workdir = str(tmp_path_factory.mktemp("grpo_killed"))
  process = subprocess.Popen(command(workdir, data_cache), cwd=ROOT, env=env(1),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while max(steps(workdir), default=0) < 6 or not os.path.isdir(
      os.path.join(workdir, "checkpoints", "4")):
    assert process.poll() is None, process.communicate()[1][-3000:]
    assert time.time() < deadline
    time.sleep(0.01)
  process.kill()
  assert process.wait() == -signal.SIGKILL  # killed mid-run, not finished
  before = steps(workdir)
  shutil.copy(os.path.join(workdir, "metrics.jsonl"), os.path.join(workdir, "before.jsonl"))
  rerun = subprocess.run(command(workdir, data_cache), cwd=ROOT, env=env(1),
                         capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  return workdir, before, steps(workdir), rerun.stdout


def test_kill_9_and_resume_replays_the_same_rollouts_bitwise(killed_and_resumed):
  workdir, before, after, stdout = killed_and_resumed
  assert "Resuming from checkpoint at step 4" in stdout
  assert sorted(after) == list(range(1, 9))
  replayed = [s for s in before if s > 4]
  assert replayed and all(before[s] == after[s] for s in replayed)  # rewards, kl, loss, ...
  assert len({after[s]["reward"] for s in after}) > 4  # the rollouts change step to step
  metrics = after[8]
  for name in ("reward", "reward_std", "kl", "entropy", "clip_ratio", "frac_reward_zero_std",
               "completions/mean_length", "completions/clipped_ratio",
               "rewards/tests.stages.rl_rewards:letters/mean", "rewards/exact/mean"):
    assert np.isfinite(metrics[name]), name
  assert metrics["kl"] > 0  # the policy moved off the reference
  last = [r for r in records(workdir) if "loss" in r][-1]
  assert last["rollout/tokens_per_sec"] > 0 and last["update/tokens_per_sec"] > 0
  with open(os.path.join(workdir, "samples.jsonl"), encoding="utf-8") as f:
    samples = [json.loads(line) for line in f]
  # Step 4's samples were written before the kill and replayed after it: once in the file.
  assert [s["step"] for s in samples] == [0] * 4 + [4] * 4 and "completion" in samples[0]


def test_8_devices_give_one_devices_metrics(killed_and_resumed, tmp_path, data_cache):
  """The same run on 8 forced CPU devices (data-parallel rollouts and updates): the same
  sampled completions (rewards, lengths) and losses to float rounding."""
  _, _, one_device, _ = killed_and_resumed
  result = subprocess.run(command(tmp_path, data_cache), cwd=ROOT, env=env(8),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "'data': 8" in result.stdout
  eight = steps(tmp_path)
  assert sorted(eight) == sorted(one_device)
  for step in eight:
    for name in ("reward", "completions/mean_length"):
      assert eight[step][name] == one_device[step][name], (step, name)
    for name in ("loss", "kl", "entropy", "grad_norm"):
      assert eight[step][name] == pytest.approx(one_device[step][name], rel=1e-4, abs=1e-6), (
          step, name)


def small_config(data_cache, **rl):
  config = config_lib.base_config()
  config.stage, config.model.preset = "grpo", "tiny"
  config.data.source, config.data.cache_dir = "builtin:tasks:lookup", data_cache
  config.data.eval_documents = 2
  t = config.train
  t.steps, t.batch_size, t.log_every, t.eval_every, t.checkpoint_every = 1, 2, 1, 1000, 1000
  config.rl.group_size, config.rl.max_prompt_len, config.rl.max_new_tokens = 2, 24, 4
  config.rl.reward = "tests.stages.rl_rewards:letters"
  for key, value in rl.items():
    section, field = key.split("__")
    config[section][field] = value
  return config_lib.lock(config)


def test_lora_rollouts_decode_the_adapted_policy(data_cache):
  """Under LoRA the rollouts decode plain Decoder parameters (`policy_of`: adapters folded
  into the base); they must compute what the adapted model computes, and the reference must
  be the starting model."""
  config = small_config(data_cache, lora__rank=4)
  stage = stages.for_config(config)(config, tokenizer_lib.get("byte"))
  model_config = config_lib.model_config(config)
  adapted = stage.make_model(model_config)
  params = nn.unbox(adapted.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  adapters, frozen = stage.partition(params)
  assert set(frozen) == {"base"}  # no copy of the start: the reference is the adapters off
  rng = np.random.default_rng(0)
  adapters = jax.tree.map(lambda x: x + 0.1 * rng.standard_normal(x.shape, np.float32),
                          adapters)  # B != 0: the adapters change the output
  policy, reference = stage.inner.policy_of(adapters, frozen)
  tokens = jnp.asarray(rng.integers(0, 256, (2, 12)), jnp.int32)
  plain = jax.jit(lambda p: Decoder(model_config).apply({"params": p}, tokens))
  expected = jax.jit(lambda p: adapted.apply({"params": p}, tokens))(
      lora_lib.join(adapters, frozen["base"]))
  base = plain(frozen["base"])
  np.testing.assert_allclose(np.asarray(plain(policy)), np.asarray(expected), atol=1e-4)
  assert np.abs(np.asarray(expected) - np.asarray(base)).max() > 1e-2
  np.testing.assert_allclose(np.asarray(plain(reference)), np.asarray(base), atol=1e-5)


def test_completions_are_scored_at_the_sampling_temperature(data_cache):
  """As TRL's GRPO: the old policy's and the reference's log-probs of a completion are those
  of the distribution it was drawn from, log softmax(logits / rl.temperature), and the loss
  scores the same way (at the rollout's own parameters: ratio 1, nothing clipped, KL 0)."""
  config = small_config(data_cache, rl__temperature=0.5, rl__num_iterations=2,
                        rl__beta=0.04)
  stage = stages.for_config(config)(config, tokenizer_lib.get("byte"))
  model = stage.make_model(config_lib.model_config(config))
  params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  params, frozen = stage.partition(params)
  prompts, start = rollout_lib.left_pad([[5, 6, 7, 8], [9, 10, 11]], 24)
  mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules_lib.DEFAULT_RULES):
    batch = stage._make_rollout_fn(rules_lib.batch_sharding(mesh))(  # pylint: disable=protected-access
        params, frozen, prompts, start, jax.random.key(1))
    logits = model.apply({"params": params}, batch["inputs"], positions=batch["positions"],
                         segment_ids=batch["segment_ids"])[:, 23:]    # [B G, N, V]
    batch["advantages"] = jnp.asarray([1.0, -1.0, 0.5, -0.5])
    apply = lambda p, t, **kw: model.apply({"params": p}, t, **kw)
    _, sums = jax.jit(stage.loss, static_argnums=0)(apply, params, frozen, batch)
  tempered = jax.nn.log_softmax(np.asarray(logits, np.float64) / 0.5, axis=-1)
  expected = np.take_along_axis(tempered, np.asarray(batch["targets"])[:, 23:, None], -1)[..., 0]
  mask = np.asarray(batch["completion_mask"])
  assert mask.sum() > 4
  for name in ("old_logps", "ref_logps"):
    np.testing.assert_allclose(np.asarray(batch[name]) * mask, expected * mask, atol=1e-5)
  assert float(sums["clip_ratio"]) == 0.0 and abs(float(sums["kl"])) < 1e-5


@pytest.mark.parametrize("overrides,message", [
    ({"rl__group_size": 1}, "rl.group_size=1 must be >= 2"),
    ({"rl__loss_type": "grpo"}, "rl.loss_type='grpo' is not one of"),
    ({"rl__kl_estimator": "k2"}, "rl.kl_estimator='k2'"),
    ({"rl__num_iterations": 3}, "train.checkpoint_every=1000 must be a multiple of "
                                "rl.num_iterations=3"),
    ({"rl__max_prompt_len": 600}, "exceeds model.max_seq_len=512"),
    ({"rl__temperature": 0.0}, "rl.temperature=0.0 must be > 0"),
])
def test_bad_rl_fields_are_named(data_cache, tmp_path, overrides, message):
  with pytest.raises(ValueError, match=message):
    train_and_evaluate(small_config(data_cache, **overrides), str(tmp_path))
