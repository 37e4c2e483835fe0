"""`lm plan` for RL stages (lm/plan_rl.py): the rollout phase's KV cache against the bytes of
the cache the engine allocates (jax.eval_shape of KVCache.zeros), the reward model against
its parameter tree, and the peak as the larger of the two phases."""

import jax
import numpy as np
import pytest

from lm import config as config_lib
from lm import plan as plan_lib
from lm.model import KVCache
from lm.model.heads import RewardModel
from lm.train import state as state_lib


def ppo_config(value_model="shared", layout="scanned"):
  config = config_lib.base_config()
  config.stage, config.model.preset, config.model.dtype = "ppo", "llama2-7b", "bfloat16"
  config.model.remat = "full"
  config.mesh.data, config.mesh.fsdp = 1, 4
  config.data.source = "builtin:preferences"
  config.train.batch_size = 16
  config.rl.group_size, config.rl.max_prompt_len, config.rl.max_new_tokens = 2, 100, 60
  config.rl.reward, config.rl.rollout_layout = "model,true", layout
  config.ppo.value_model, config.ppo.num_minibatches = value_model, 4
  return config_lib.lock(config)


def test_rollout_memory_is_the_engines_cache_and_a_whole_reward_model():
  plan = plan_lib.plan(ppo_config(), "v5p-8")
  r, model = plan.rollout, plan.model
  cache = jax.eval_shape(lambda: KVCache.zeros(model, 32, 160))   # 16 prompts x 2, P + N
  whole = sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(cache.key + cache.value))
  assert r.rollouts == 32 and r.slots == 160 and r.kv_cache == whole / 4  # batch over fsdp=4
  reward_params = state_lib.count_params(jax.eval_shape(
      lambda: RewardModel(model).init(jax.random.key(0), np.zeros((1, 8), np.int32))["params"]))
  assert r.reward_model == 4 * reward_params > 4 * 6.7e9            # float32 on every chip
  assert r.logits == 8 * 159 * 32000 * 4 and r.weights_copy == 0
  assert plan.micro_batch == 32 // 4 // 4                            # one minibatch per fsdp
  update = plan.gradients + plan.activations.total
  assert plan.total == pytest.approx(plan.params + plan.frozen + plan.optimizer_state
                                     + r.reward_model + max(update, r.transient))


def test_unrolled_rollouts_and_a_separate_value_model_cost_what_they_hold():
  shared, separate = plan_lib.plan(ppo_config(), "v5p-8"), plan_lib.plan(
      ppo_config("separate", "unrolled"), "v5p-8")
  assert separate.rollout.weights_copy == pytest.approx(shared.params, rel=1e-3)  # the policy
  assert separate.params == pytest.approx(2 * shared.params, rel=1e-3)  # + a value decoder
  assert separate.activations.saved == 2 * shared.activations.saved
