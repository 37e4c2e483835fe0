"""Proximal policy optimisation against a reward (`stage="ppo"`): RLHF as Ziegler et al. 2019
and Ouyang et al. 2022 run it, with TRL's PPOTrainer conventions (lm/rl/ppo_math.py).

Letters: B rollouts (prompts x rl.group_size), P prompt columns (rl.max_prompt_len), N
response columns (rl.max_new_tokens), T = P + N - 1 training columns, V vocab.

The module trained is lm/model/heads.py's ActorCritic: the policy (a Decoder under "policy",
filled by `init_from`) and a value function (`ppo.value_model`: a separate decoder with a
scalar head, started from the policy or from a reward model's workdir, `ppo.value_init`; or a
head on the policy's trunk). The frozen tree is the reference policy, a copy of the start.

One training step of the loop is one PPO iteration (lm/rl/ppo_iteration.py): sample a
response to each prompt of the batch from the live policy, score it with `rl.reward` (e.g. the
reward model), add the per-token KL penalty, GAE, then `ppo.epochs` passes of
`ppo.num_minibatches` updates of the loss below. The learning-rate schedule counts those
updates: train.steps x ppo.epochs x ppo.num_minibatches of them (train.warmup_steps likewise
in iterations). The KL coefficient is fixed (`ppo.kl_target=0`) or adapted towards the target
after every iteration; it is saved with the data position in every checkpoint, so a resumed
run continues with it.

The loss of one minibatch of experience, per response token, averaged over them:
  clipped policy loss (rl.epsilon) + ppo.vf_coef x clipped value loss (ppo.value_clip)
Metrics carry TRL's names: objective/kl (KL to the reference per response), objective/scores,
objective/rlhf_reward, objective/entropy, policy/clipfrac_avg, policy/approxkl_avg,
policy/entropy_avg, loss/policy_avg, loss/value_avg, val/clipfrac_avg, and
val/explained_variance, completions/mean_length, objective/kl_coef, rewards/<name>/mean,
rollout/tokens_per_sec and update/tokens_per_sec.

Where this differs from TRL's PPOTrainer (1.x, trl.experimental.ppo): the sampling
temperature is `rl.temperature` (default 1.0; TRL 0.7); the values, rewards and the value
loss cover the response tokens alone (TRL's cover one more position after the end); the KL
coefficient can adapt (TRL 1.x keeps it fixed; its older AdaptiveKLController is
`ppo.kl_target`); evaluation samples held-out prompts and scores them (eval_reward,
eval_rewards/<name>, eval_kl, eval_length; and the greedy reply's, eval_greedy/reward and
eval_greedy/rewards/<name>). LoRA (`lora.rank`) is not supported with PPO.
"""

import dataclasses
from typing import Any, Callable, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lm.data import pipeline as pipeline_lib
from lm.infer import chat
from lm.model import ModelConfig
from lm.model.heads import ActorCritic
from lm.rl import losses
from lm.rl import ppo_math
from lm.rl import rewards as rewards_lib
from lm.rl import rollout as rollout_lib

VALUE_MODELS = ("separate", "shared")
UPDATE_METRICS = ("loss/policy_avg", "loss/value_avg", "policy/clipfrac_avg",
                  "policy/approxkl_avg", "policy/entropy_avg", "val/clipfrac_avg", "val/mean")


def prompt_messages(record: dict) -> list[dict]:
  """The conversation a record's "prompt" field holds (a user message, or a message list);
  ValueError names the field."""
  prompt = record.get("prompt")
  if isinstance(prompt, str) and prompt:
    return [{"role": "user", "content": prompt}]
  if isinstance(prompt, list) and prompt and all(
      isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
      and isinstance(m.get("content"), str) for m in prompt):
    return [{"role": m["role"], "content": m["content"]} for m in prompt]
  raise ValueError(f"field 'prompt' must be a non-empty string or a list of {{'role', "
                   f"'content'}} messages, got {str(prompt)[:200]}")


class Indexed(Sequence):
  """records with each one's index added (the rewards read the record back on the host)."""

  def __init__(self, records: Sequence):
    self.records = records

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, i):
    return (int(i), self.records[int(i)])


@dataclasses.dataclass(frozen=True)
class PromptRow:
  """(index, record) -> its prompt left-padded to P columns (or None: longer, skipped)."""
  tokenizer: Any
  prompt_len: int

  @property
  def name(self) -> str:
    return self.tokenizer.name

  def __call__(self, item: tuple[int, dict]) -> dict[str, np.ndarray] | None:
    index, record = item
    ids = chat.render(self.tokenizer, prompt_messages(record))
    if len(ids) > self.prompt_len:
      return None
    tokens, start = rollout_lib.left_pad([ids], self.prompt_len)
    return {"prompt": tokens[0], "start": start[0], "index": np.int32(index),
            "weight": np.float32(1.0)}


class KlController:
  """The KL coefficient, fixed or adapted towards `ppo.kl_target` (host floats: exact in the
  JSON of the data state, so a resumed run continues bit for bit)."""

  def __init__(self, p: ml_collections.ConfigDict):
    self.value, self.target, self.horizon = float(p.kl_coef), float(p.kl_target), p.kl_horizon

  def update(self, kl: float, rollouts: int) -> None:
    if self.target > 0:
      self.value = float(ppo_math.adaptive_kl_coef(np.float64(self.value), np.float64(kl),
                                                   self.target, self.horizon, rollouts))


class PromptBatches:
  """The prompt batches, whose resumable state also holds the KL coefficient."""

  def __init__(self, inner: pipeline_lib.Batches, controller: KlController):
    self.inner, self.controller = inner, controller
    self.fingerprint, self.seed = inner.fingerprint, inner.seed

  shards = property(lambda self: self.inner.shards)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self.inner)

  def get_state(self) -> dict:
    """The inner state with every stream's position wrapped beside the coefficient (the
    checkpoint keeps each stream's state whole, lm/train/checkpoint.py)."""
    state = self.inner.get_state()
    return {**state, "streams": {s: {"position": position, "kl_coef": self.controller.value}
                                 for s, position in state["streams"].items()}}

  def set_state(self, state: dict) -> None:
    streams = state["streams"]
    self.inner.set_state({**state, "streams": {s: v["position"] for s, v in streams.items()}})
    self.controller.value = float(next(iter(streams.values()))["kl_coef"])

  def close(self) -> None:
    self.inner.close()


def _copy(leaf: Any) -> Any:
  return jnp.copy(leaf) if isinstance(leaf, jax.Array) else leaf


class Stage:
  """PPO: ActorCritic trained, the reference policy frozen; see the module docstring."""

  name = "ppo"
  fields = ("prompt",)
  pretrained_key = "policy"   # init_from fills the policy; the value model: see load_extra

  def __init__(self, config: ml_collections.ConfigDict, tokenizer: Any):
    p, rl = config.ppo, config.rl
    errors = []
    if p.value_model not in VALUE_MODELS:
      errors.append(f"ppo.value_model={p.value_model!r} is not one of {list(VALUE_MODELS)}")
    if p.value_init and p.value_model != "separate":
      errors.append(f"ppo.value_init={p.value_init!r} starts a separate value model; "
                    f"ppo.value_model={p.value_model!r}")
    if not 0 <= p.gamma <= 1 or not 0 <= p.lam <= 1:
      errors.append(f"ppo.gamma={p.gamma} and ppo.lam={p.lam} must be in [0, 1]")
    if p.kl_coef < 0 or p.kl_target < 0 or p.kl_horizon <= 0:
      errors.append(f"ppo.kl_coef={p.kl_coef} and ppo.kl_target={p.kl_target} must be >= 0, "
                    f"ppo.kl_horizon={p.kl_horizon} positive")
    if p.kl_target > 0 and p.kl_coef == 0:
      errors.append("ppo.kl_target > 0 adapts ppo.kl_coef by factors: it must start positive")
    if p.kl_estimator not in losses.KL_ESTIMATORS:
      errors.append(f"ppo.kl_estimator={p.kl_estimator!r} is not one of "
                    f"{list(losses.KL_ESTIMATORS)}")
    if p.epochs <= 0 or p.num_minibatches <= 0 or p.value_clip <= 0 or p.vf_coef < 0:
      errors.append(f"ppo.epochs={p.epochs}, ppo.num_minibatches={p.num_minibatches} and "
                    f"ppo.value_clip={p.value_clip} must be positive, ppo.vf_coef={p.vf_coef} "
                    ">= 0")
    rollouts = config.train.batch_size * rl.group_size
    if p.num_minibatches > 0 and rollouts % p.num_minibatches:
      errors.append(f"train.batch_size x rl.group_size = {rollouts} rollouts are not divisible "
                    f"by ppo.num_minibatches={p.num_minibatches}")
    if rl.epsilon <= 0 or rl.temperature <= 0:
      errors.append(f"rl.epsilon={rl.epsilon} and rl.temperature={rl.temperature} must be "
                    "positive (PPO samples and reweighs)")
    if config.train.grad_accum != 1:
      errors.append(f"train.grad_accum={config.train.grad_accum}: stage='ppo' sizes its "
                    "updates with ppo.num_minibatches")
    if config.lora.rank:
      errors.append(f"lora.rank={config.lora.rank}: stage='ppo' trains every parameter of the "
                    "policy and the value model (LoRA is not supported with PPO yet)")
    if errors:
      raise ValueError("Invalid config: " + "; ".join(errors))
    if not config.init_from:
      logging.warning("stage='ppo' without init_from: the policy and reference are random")
    self.config, self.tokenizer = config, tokenizer
    self.p, self.rl = p, rl
    self.prompt_len, self.new_tokens = rl.max_prompt_len, rl.max_new_tokens
    self.rollouts = rollouts
    self.minibatch = rollouts // max(p.num_minibatches, 1)
    self.row = PromptRow(tokenizer, rl.max_prompt_len)
    self.controller = KlController(p)
    self._reward = None
    self.metric_weights = {"loss": "weight", **{name: "weight" for name in UPDATE_METRICS}}
    self.records: Sequence = ()
    self.eval_records: Sequence = ()

  @property
  def reward(self) -> rewards_lib.Reward:
    """`rl.reward`, built when first asked for (`lm plan` never loads a reward model)."""
    if self._reward is None:
      self._reward = rewards_lib.from_config(self.rl)
    return self._reward

  # --- the model and its parameters -----------------------------------------------------------

  def make_model(self, model_config: ModelConfig) -> ActorCritic:
    return ActorCritic(model_config, shared=self.p.value_model == "shared")

  def partition(self, params: Any) -> tuple[Any, Any]:
    return params, {"reference": jax.tree.map(_copy, params["policy"])}

  def load_extra(self, params: Any) -> Any:
    """The value model at step 0: the policy's decoder with its fresh head, or a reward
    model's whole tree (`ppo.value_init`), placed as the value model's shardings say."""
    if self.p.value_model != "separate":
      return params
    # pylint: disable=import-outside-toplevel
    from lm.train import checkpoint as checkpoint_lib
    value = params["value"]
    shardings = jax.tree.map(lambda x: x.sharding, value)
    if self.p.value_init:
      loaded = checkpoint_lib.restore_params(self.p.value_init, value, shardings)
      if loaded is None:
        raise ValueError(f"ppo.value_init={self.p.value_init!r} holds no checkpoint of a "
                         "reward model shaped like the policy")
      value = loaded
    else:
      value = {**value, "decoder": jax.tree.map(_copy, params["policy"])}
    return {**params, "value": value}

  # --- data ------------------------------------------------------------------------------------

  def check_record(self, record: dict) -> None:
    prompt_messages(record)

  def prompt_text(self, record: dict) -> str:
    """What a reward function reads as the prompt: the last user message."""
    return next((m["content"] for m in reversed(prompt_messages(record))
                 if m["role"] == "user"), "")

  def train_batches(self, records: Sequence, config: ml_collections.ConfigDict, rows: slice,
                    seed: int) -> PromptBatches:
    self.records = records
    return PromptBatches(pipeline_lib.padded_batches(Indexed(records), self.row, config, rows,
                                                     seed), self.controller)

  def eval_set(self, records: Sequence, config: ml_collections.ConfigDict, rows: slice
               ) -> pipeline_lib.EvalSet:
    self.eval_records = records
    padding = {"prompt": np.zeros(self.prompt_len, np.int32), "start": np.int32(0),
               "index": np.int32(0), "weight": np.float32(0.0)}
    padding["prompt"][-1] = 1  # a one-token prompt: the row decodes like any other
    padding["start"] = np.int32(self.prompt_len - 1)
    return pipeline_lib.padded_eval_set(Indexed(records), self.row, config, rows, padding)

  def example_batch(self, batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
    """Zeros shaped like one minibatch of experience (what `loss` reads; `lm plan` compiles
    the update from it). `batch_size` counts prompts, as train.batch_size does."""
    del seq_len
    rows = batch_size * self.rl.group_size // max(self.p.num_minibatches, 1)
    t, n = self.prompt_len + self.new_tokens - 1, self.new_tokens
    ints = lambda width: np.zeros((rows, width), np.int32)
    floats = lambda: np.zeros((rows, n), np.float32)
    return {"inputs": ints(t), "targets": ints(t), "positions": ints(t),
            "segment_ids": np.ones((rows, t), np.int32), "mask": np.ones((rows, n), np.float32),
            "old_logprobs": floats(), "old_values": floats(), "advantages": floats(),
            "returns": floats()}

  # --- the loss of one minibatch of experience --------------------------------------------------

  def forward(self, apply: Callable, params: Any, batch: dict[str, jax.Array]
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(logprobs [B, N], values [B, N], entropy [B, N]) of the response tokens, from the
    logits divided by the sampling temperature (the distribution they were drawn from)."""
    logits, values = apply(params, batch["inputs"], positions=batch["positions"],
                           segment_ids=batch["segment_ids"])        # [B, T, V], [B, T]
    first = self.prompt_len - 1
    logits = logits[:, first:].astype(jnp.float32) / self.rl.temperature     # [B, N, V]
    logprobs = rollout_lib.logprobs_of(logits, batch["targets"][:, first:])
    return logprobs, values[:, first:], ppo_math.entropy(logits)

  def loss(self, apply: Callable, params: Any, frozen: Any, batch: dict[str, jax.Array]):
    del frozen
    logprobs, values, entropy = self.forward(apply, params, batch)
    mask = batch["mask"]
    pg, pg_clipped = ppo_math.clipped_policy_loss(logprobs, batch["old_logprobs"],
                                                  batch["advantages"], self.rl.epsilon)
    vf, vf_clipped = ppo_math.clipped_value_loss(values, batch["old_values"], batch["returns"],
                                                 self.p.value_clip)
    masked = lambda x: jnp.sum(jax.lax.stop_gradient(x) * mask)
    sums = {"weight": jnp.sum(mask), "loss": jnp.sum((pg + self.p.vf_coef * vf) * mask),
            "loss/policy_avg": masked(pg), "loss/value_avg": masked(vf),
            "policy/clipfrac_avg": masked(pg_clipped),
            "policy/approxkl_avg": masked(0.5 * jnp.square(logprobs - batch["old_logprobs"])),
            "policy/entropy_avg": masked(entropy), "val/clipfrac_avg": masked(vf_clipped),
            "val/mean": masked(values)}
    return sums["loss"], sums

  def eval_sums(self, apply: Callable, params: Any, frozen: Any, batch: dict[str, jax.Array]
                ) -> dict[str, jax.Array]:
    raise NotImplementedError("stage='ppo' evaluates with make_eval_step")

  def eval_metrics(self, totals: dict[str, float], eval_set: Any) -> dict[str, float]:
    del eval_set
    weight = max(totals.pop("weight"), 1.0)
    return {f"eval_{name}": value / weight for name, value in totals.items()}

  # --- the iteration (lm/rl/ppo_iteration.py) ---------------------------------------------------

  def make_step(self, setup: Any, workdir: str) -> Callable:
    from lm.rl import ppo_iteration  # pylint: disable=import-outside-toplevel
    return ppo_iteration.Iteration(self, setup, workdir)

  def make_eval_step(self, setup: Any) -> Callable:
    from lm.rl import ppo_iteration  # pylint: disable=import-outside-toplevel
    return ppo_iteration.Evaluation(self, setup)

  def between_steps(self, state: Any, step: int) -> Any:
    del step
    return state
