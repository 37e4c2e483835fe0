"""`lm plan` for the RL stages (stage="grpo", "ppo"): what the rollout phase adds to the
training step's memory (lm/plan.py counts the rest).

Letters as in lm/plan.py; R rollouts per step (train.batch_size prompts x rl.group_size), P
prompt columns (rl.max_prompt_len), N new tokens (rl.max_new_tokens), S = P + N cache slots
(or the sliding window), r = R / ways(act_batch) rollouts per device, k = K / ways(act_kv_heads).

A step of an RL stage has two phases that never overlap in time: the rollouts (decoding with
a KV cache, then one scoring forward pass of the policy, the reference and, for PPO, the value
model over the R rows of T = P + N - 1 columns) and the updates (forward and backward over a
minibatch of those rows, which lm/plan.py counts as the training step with the update's
micro-batch and T). What stays resident through both: the parameters (the policy, PPO's value
model, the frozen reference), the optimizer state, and a reward model when `rl.reward` names
"model" (lm.RewardModel: float32, on a mesh of its own whose batch axis takes every device,
so every device holds all of it). So

  total = parameters + frozen + optimizer state + reward model
          + max(gradients + activations, the rollout phase)
  rollout phase = KV cache 2 L r k S H s
                + the unrolled copy of the policy's float32 parameters when
                  rl.rollout_layout="unrolled" (sharded like them)
                + the scoring pass's float32 logits r T v x 4 (the largest activation of a
                  forward pass without gradient; with a large vocabulary it dominates)

The scoring pass's other activations (one layer's at a time, nothing saved) are not counted.
"""

import dataclasses
import json
from typing import Any

from etils import epath
import ml_collections

from lm import config as config_lib
from lm.model import ModelConfig
from lm.model.attention import cache_slots

RL_STAGES = ("grpo", "ppo")


@dataclasses.dataclass(frozen=True)
class Rollout:
  """Bytes per device of an RL stage's rollout phase, and what stays resident for it."""
  rollouts: int           # R: completions sampled per step
  per_device: int         # r
  seq_len: int            # T: columns of a rollout row in the scoring and update passes
  update_rows: int        # rows of one update (a PPO minibatch; GRPO: all R)
  slots: int              # S
  kv_cache: float
  weights_copy: float     # rl.rollout_layout="unrolled"
  logits: float           # the scoring pass's float32 logits
  reward_model: float     # resident: a reward model beside the train state
  reward_model_params: int = 0

  @property
  def transient(self) -> float:
    return self.kv_cache + self.weights_copy + self.logits


def is_rl(config: ml_collections.ConfigDict) -> bool:
  return config.stage in RL_STAGES and "rl" in config


def update_shape(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(rows, columns) of one update of an RL stage: the batch lm/plan.py sizes activations by."""
  rl = config.rl
  rollouts = config.train.batch_size * rl.group_size
  minibatches = config.ppo.num_minibatches if config.stage == "ppo" else 1
  return rollouts // max(minibatches, 1), rl.max_prompt_len + rl.max_new_tokens - 1


def _reward_model_config(config: ml_collections.ConfigDict, policy: ModelConfig) -> ModelConfig:
  """The reward model's architecture: its workdir's config.json when it is here, else the
  policy's (a reward model is usually trained from the same SFT model)."""
  path = epath.Path(config.rl.reward_model) / "config.json" if config.rl.reward_model else None
  if path is not None and path.exists():
    return config_lib.model_config(ml_collections.ConfigDict(json.loads(path.read_text())))
  return policy


def rollout_memory(config: ml_collections.ConfigDict, model: ModelConfig, ways: Any,
                   policy_param_bytes: float, num_params: Any) -> Rollout:
  """The rollout phase of `config` (an RL stage) per device. `ways(logical)`: how many ways
  the rules split a logical axis on the target mesh; `policy_param_bytes`: the policy's
  float32 parameters per device; `num_params(model_config)`: a reward model's count."""
  rl = config.rl
  rollouts = config.train.batch_size * rl.group_size
  rows = -(-rollouts // ways("act_batch"))
  t = rl.max_prompt_len + rl.max_new_tokens - 1
  slots = cache_slots(model, rl.max_prompt_len + rl.max_new_tokens)
  k = -(-model.num_kv_heads // ways("act_kv_heads"))
  kv = 2 * model.num_layers * rows * k * slots * model.resolved_head_dim * \
      model.compute_dtype.itemsize
  v = -(-model.vocab_size // ways("act_vocab"))
  reward_params = 0
  if "model" in [name.strip() for name in rl.reward.split(",")]:
    reward_params = num_params(_reward_model_config(config, model))
  return Rollout(rollouts=rollouts, per_device=rows, seq_len=t,
                 update_rows=update_shape(config)[0], slots=slots, kv_cache=float(kv),
                 weights_copy=policy_param_bytes if rl.rollout_layout == "unrolled" else 0.0,
                 logits=float(rows * t * v * 4), reward_model=4.0 * reward_params,
                 reward_model_params=reward_params)


def format_rows(r: Rollout) -> list[tuple[str, float]]:
  """The plan table's extra rows."""
  rows = [(f"rollout: KV cache ({r.per_device} x {r.slots} slots)", r.kv_cache),
          ("rollout: scoring logits (float32)", r.logits)]
  if r.weights_copy:
    rows.insert(1, ("rollout: unrolled copy of the policy", r.weights_copy))
  if r.reward_model:
    rows.append(("reward model (float32, every device)", r.reward_model))
  return rows


def summary(r: Rollout, update_bytes: float) -> str:
  phase = "the rollout phase" if r.transient > update_bytes else "the update phase"
  return (f"RL: {r.rollouts} rollouts a step ({r.per_device} per device) of {r.seq_len} "
          f"columns, updates of {r.update_rows} rows; the peak is {phase} (rollout "
          f"{r.transient / 2 ** 30:.2f} GiB vs gradients + activations "
          f"{update_bytes / 2 ** 30:.2f} GiB)")


def rollout_flops(r: Rollout, matmul_weights: float, stage: str) -> float:
  """FLOPs of the rollout phase: 2 per matmul weight per token to decode, and as many again
  for each model of the scoring pass (policy and reference; PPO's value model too)."""
  scorers = 3 if stage == "ppo" else 2
  return 2.0 * matmul_weights * r.rollouts * r.seq_len * (1 + scorers)


def update_activations(config: ml_collections.ConfigDict, activations: Any) -> Any:
  """The update's activations: PPO with a separate value model runs a second decoder over
  the same rows, whose saved activations add as much again (its head has no logits)."""
  if config.stage == "ppo" and config.ppo.value_model == "separate":
    return dataclasses.replace(activations, saved=2 * activations.saved)
  return activations


def updates_per_step(config: ml_collections.ConfigDict) -> int:
  if config.stage == "ppo":
    return config.ppo.epochs * config.ppo.num_minibatches
  return 1
