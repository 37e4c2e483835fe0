"""stage="ppo" (lm/stages/ppo.py, lm/rl/ppo_iteration.py) end to end on the preference world:
killed with SIGKILL after a checkpoint and rerun, the steps it replays have the metrics
(rollouts, rewards, the adapted KL coefficient, losses) of the run before the kill, bit for
bit, and each step's samples are written once; 8 CPU devices give one device's metrics.
Also the policy-with-value module's logits against the bare Decoder's."""

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

from lm.model import Decoder, presets
from lm.model.heads import ActorCritic
from tests.metrics_log import records

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REWARD = "tests.stages.rl_rewards:true_or_block"  # the true reward; blocks when asked to
# 8 prompts x 8 new tokens, 2 epochs of one minibatch; an adaptive KL coefficient, so that
# the coefficient a resumed run continues with shows in its metrics.
PPO = ["--config=configs/tiny.py", "--config.stage=ppo",
       "--config.data.source=builtin:preferences", "--config.train.batch_size=8",
       "--config.train.steps=4", "--config.train.checkpoint_every=2",
       "--config.train.log_every=1", "--config.train.eval_every=1000",
       "--config.train.warmup_steps=1", "--config.data.eval_documents=8",
       "--config.rl.group_size=1", "--config.rl.max_prompt_len=48",
       "--config.rl.max_new_tokens=8", f"--config.rl.reward={REWARD}", "--config.ppo.epochs=2",
       "--config.ppo.num_minibatches=1", "--config.ppo.kl_target=0.01",
       "--config.ppo.kl_horizon=8", "--config.rl.samples_every=1"]


def command(workdir, cache, *more) -> list[str]:
  return [sys.executable, "-m", "lm", "train", f"--workdir={workdir}", *PPO,
          f"--config.data.cache_dir={cache}", *more]


def env(devices: int = 1, **more) -> dict:
  return {**os.environ, "JAX_PLATFORMS": "cpu",
          "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", **more}


def exact(workdir) -> list[dict]:
  """Every metric but the timings, at each step and the final evaluation."""
  return [{k: v for k, v in r.items() if "per_sec" not in k and k != "mfu"}
          for r in records(workdir) if "loss" in r or "eval_reward" in r]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_cache):
  """(the 1-device run's metrics before its kill, after its rerun, the rerun's stdout, its
  workdir, the 8-device run's metrics). The 1-device run is killed while its reward blocks in
  step 4 (after step 3's metrics and the checkpoint at step 2), so the rerun replays step 3;
  the uninterrupted 8-device run goes on beside it."""
  killed, eight = (str(tmp_path_factory.mktemp(name)) for name in ("killed", "eight"))
  whole = subprocess.Popen(command(eight, data_cache), cwd=ROOT, env=env(8),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  process = subprocess.Popen(command(killed, data_cache), cwd=ROOT,
                             env=env(1, LM_TEST_BLOCK_AT="4"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 600
  while len(exact(killed)) < 3 or not os.path.isdir(os.path.join(killed, "checkpoints", "2")):
    assert process.poll() is None, process.communicate()[1][-3000:]
    assert time.time() < deadline
    time.sleep(0.05)
  process.kill()
  assert process.wait() == -signal.SIGKILL
  before = exact(killed)
  shutil.copy(os.path.join(killed, "samples.jsonl"), os.path.join(killed, "before.jsonl"))
  rerun = subprocess.run(command(killed, data_cache), cwd=ROOT, env=env(),
                         capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  _, err = whole.communicate(timeout=600)
  assert whole.returncode == 0, err[-3000:]
  return before, exact(killed), rerun.stdout, killed, exact(eight)


def test_ppo_resumes_after_kill_9_bitwise(runs):
  before, after, stdout, killed, _ = runs
  assert "Resuming from checkpoint at step 2" in stdout
  assert [r["step"] for r in before] == [1, 2, 3]  # blocked in step 4
  assert len(after) == 5 and after[:3] == before  # step 3 replayed bit for bit
  assert len({r["objective/kl_coef"] for r in after[:4]}) == 4  # restored, then adapted
  with open(os.path.join(killed, "before.jsonl"), encoding="utf-8") as f:
    assert [json.loads(line)["step"] for line in f] == [1] * 4 + [2] * 4 + [3] * 4
  with open(os.path.join(killed, "samples.jsonl"), encoding="utf-8") as f:
    samples = [json.loads(line) for line in f]
  # Step 3's samples, written before the kill and again by the rerun: once in the file.
  assert [s["step"] for s in samples] == [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4
  assert REWARD in samples[0] and samples[8:12] == [
      json.loads(line) for line in open(os.path.join(killed, "before.jsonl"),
                                        encoding="utf-8")][8:12]


def test_8_cpu_devices_give_one_devices_metrics(runs):
  _, one, _, _, eight = runs
  assert len(one) == len(eight) == 5
  for a, b in zip(one, eight):
    assert a.keys() == b.keys()
    for name in a:
      np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("tied", [False, True])
def test_shared_value_head_reads_the_policys_own_logits(tied):
  cfg = presets.get("tiny").replace(tie_embeddings=tied)
  model = ActorCritic(cfg, shared=True)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
                    ["params"])
  tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, cfg.vocab_size)
  logits, values = jax.jit(model.apply)({"params": params}, tokens)
  decoder = jax.jit(Decoder(cfg).apply, static_argnames="hidden")
  hidden = decoder({"params": params["policy"]}, tokens, hidden=True)
  np.testing.assert_allclose(logits, decoder({"params": params["policy"]}, tokens),
                             rtol=0, atol=1e-6)
  np.testing.assert_allclose(values, hidden @ params["value_head"] + params["value_bias"],
                             rtol=1e-5, atol=1e-6)
  assert set(params) == {"policy", "value_head", "value_bias"} and values.shape == (2, 8)


@pytest.mark.parametrize("field, value, message", [
    ("ppo__value_model", "twin", "ppo.value_model='twin' is not one of"),
    ("ppo__num_minibatches", 3, "are not divisible by ppo.num_minibatches=3"),
    ("ppo__kl_estimator", "k2", "ppo.kl_estimator='k2'"),
    ("train__grad_accum", 2, "train.grad_accum=2"),
    ("lora__rank", 4, "LoRA is not supported with PPO"),
    ("ppo__value_init", "runs/rm", "ppo.value_init='runs/rm' starts a separate value model")])
def test_bad_ppo_fields_are_named(make_config, field, value, message):
  from lm import stages  # pylint: disable=import-outside-toplevel
  from lm.data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  overrides = {field: value}
  if field == "ppo__value_init":
    overrides["ppo__value_model"] = "shared"
  config = make_config(**overrides)
  with config.unlocked():
    config.stage = "ppo"
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
    stages.get("ppo")(config, tokenizer_lib.get("byte"))
