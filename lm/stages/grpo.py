"""Group relative policy optimisation (`stage="grpo"`): sample G completions per prompt from
the policy being trained, reward them, and push up the ones better than their group's mean
(Shao et al. 2024, DeepSeekMath; DAPO: Yu et al. 2025; Dr. GRPO: Liu et al. 2025).

Letters: B prompts per step (`train.batch_size`), G completions per prompt
(`rl.group_size`), N completion tokens (`rl.max_new_tokens`), V vocab.

Every `rl.num_iterations` steps, the stage's step (`make_step`, which the loop calls instead
of its own) turns the step's prompt batch into rollouts before its update: inside one jit,
on the training mesh, the policy's parameters as they sit in the train state generate G
completions per prompt (lm/rl/rollout.py), and, in the same program, the frozen reference
scores them (when `rl.beta` > 0) and so does the policy (when `rl.num_iterations` > 1: the
"old" policy of the ratio). On the host, the completions are decoded and rewarded
(lm/rl/rewards.py); group advantages (lm/rl/losses.py) go back into the batch. The loss is

  per token   -min(r A, clip(r, 1 - eps, 1 + eps_high) A) + beta KL_k(pi || ref)
              r = pi(token) / pi_old(token); A the completion's advantage
  aggregated  sequence | token (DAPO) | dr_grpo over the completion tokens (losses.aggregate)

With num_iterations = 1 the old policy is the current one (r = 1, its gradient the policy
gradient), as in TRL. Metrics carry TRL's names: reward, reward_std, rewards/<name>/mean,
frac_reward_zero_std, kl, entropy, clip_ratio, completions/mean_length,
completions/clipped_ratio (ended by the token budget); and rollout/tokens_per_sec,
update/tokens_per_sec (the generated tokens per second of rollout time; the trained tokens,
prompt and completion columns, per second of the update steps since the last rollout).
Every `rl.samples_every` steps a few completions with their rewards go to
workdir/samples.jsonl.

Randomness: the rollouts of step s sample with the key fold_in(key(seed), s) (s: the step in
the train state where they are generated), so a run resumed from a checkpoint replays the
same completions. With num_iterations > 1, `train.checkpoint_every` must be a multiple of
it (a checkpoint then always starts a fresh batch of rollouts).

As TRL's, every log-prob (policy, old policy, reference) and the entropy are those of the
distribution the completions were sampled from: the logits divided by `rl.temperature`.

Where this differs from TRL's GRPOTrainer defaults: `rl.beta` is 0.04 (TRL 1.x: 0.0, no
reference); `train.batch_size` counts prompts (B x G completions are trained per step; TRL
counts completions); the held-out evaluation is the negative log-likelihood of the reference
answers (eval_loss; exact match by sampling: `lm eval`); the loss "token" normalises by the
tokens of the step's batch (TRL's "dapo" by those of the whole generation batch, the same
when one generation batch is one step).
"""

import time
from typing import Any, Callable, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lm import config as config_lib
from lm.data import pipeline as pipeline_lib
from lm.infer import chat as chat_lib
from lm.model import Decoder, ModelConfig
from lm.parallel import rules as rules_lib
from lm.rl import losses
from lm.rl import prompts as prompts_lib
from lm.rl import rewards as rewards_lib
from lm.rl import rollout as rollout_lib
from lm.rl import samples as samples_lib
from lm.stages import pretrain, sft
from lm.train import loop as loop_lib

TRAIN_METRICS = ("kl", "entropy", "clip_ratio")


def _copy(leaf: Any) -> Any:
  return jnp.copy(leaf) if isinstance(leaf, jax.Array) else leaf


def check(config: ml_collections.ConfigDict, model_config: ModelConfig | None = None) -> None:
  """Fails naming each `rl.*` field that cannot work."""
  rl, errors = config.rl, []
  if rl.group_size < 2:
    errors.append(f"rl.group_size={rl.group_size} must be >= 2 (advantages compare a group)")
  for name in ("max_prompt_len", "max_new_tokens", "num_iterations"):
    if rl[name] <= 0:
      errors.append(f"rl.{name}={rl[name]} must be positive")
  if rl.temperature <= 0:
    errors.append(f"rl.temperature={rl.temperature} must be > 0 (at 0 a group's completions "
                  "are all the same: no advantage)")
  if not 0 <= rl.epsilon < 1 or rl.epsilon_high < 0:
    errors.append(f"rl.epsilon={rl.epsilon} must be in [0, 1), rl.epsilon_high="
                  f"{rl.epsilon_high} >= 0")
  if rl.beta < 0:
    errors.append(f"rl.beta={rl.beta} must be >= 0")
  for name, allowed in (("kl_estimator", losses.KL_ESTIMATORS),
                        ("scale_rewards", losses.SCALE_REWARDS),
                        ("loss_type", losses.LOSS_TYPES),
                        ("rollout_layout", rollout_lib.LAYOUTS)):
    if rl[name] not in allowed:
      errors.append(f"rl.{name}={rl[name]!r} is not one of {list(allowed)}")
  if rl.num_iterations > 1 and config.train.checkpoint_every % rl.num_iterations:
    errors.append(f"train.checkpoint_every={config.train.checkpoint_every} must be a multiple "
                  f"of rl.num_iterations={rl.num_iterations}")
  if model_config is not None and rl.max_prompt_len + rl.max_new_tokens > model_config.max_seq_len:
    errors.append(f"rl.max_prompt_len={rl.max_prompt_len} + rl.max_new_tokens="
                  f"{rl.max_new_tokens} exceeds model.max_seq_len={model_config.max_seq_len}")
  if errors:
    raise ValueError("Invalid config: " + "; ".join(errors))


class Stage:
  """GRPO: the Decoder, every parameter trained, a frozen copy of the start as reference."""

  name = "grpo"
  fields = ("messages",)

  def __init__(self, config: ml_collections.ConfigDict, tokenizer: Any):
    check(config, config_lib.model_config(config))
    rl = config.rl
    self.config, self.rl, self.tokenizer = config, rl, tokenizer
    self.fields = config_lib.data_fields(config, Stage)
    self.group_size, self.prompt_len, self.new_tokens = (rl.group_size, rl.max_prompt_len,
                                                         rl.max_new_tokens)
    self.epsilon_high = rl.epsilon_high or rl.epsilon
    self.uses_reference = rl.beta > 0
    self.frozen_is_start = self.uses_reference  # with LoRA: the base, adapters off
    self.reward = rewards_lib.from_config(rl)
    self.row = prompts_lib.PromptRow(tokenizer, tuple(self.fields), rl.max_prompt_len)
    self.settings = rollout_lib.Settings(
        max_new_tokens=rl.max_new_tokens, temperature=rl.temperature, top_k=rl.top_k,
        top_p=rl.top_p, stop_ids=tuple(chat_lib.stop_token_ids(tokenizer)),
        layout=rl.rollout_layout)
    self.held_out = sft.Stage(config, tokenizer) if "messages" in self.fields else None
    if not config.init_from:
      logging.warning("stage='grpo' without init_from: the policy and reference are random")
    self.metric_weights = {"loss": "weight", **{m: "tokens" for m in TRAIN_METRICS}}
    self.model_config: ModelConfig | None = None
    self._rollout_fn: Callable | None = None
    self._buffer: tuple[dict, dict] | None = None    # (train batch, host metrics)
    self._last_return: float | None = None
    self._samples: samples_lib.SamplesLog | None = None

  # -- The contract ---------------------------------------------------------------------------

  def check_record(self, record: dict) -> None:
    prompts_lib.prompt_messages(record, tuple(self.fields))

  def make_model(self, model_config: ModelConfig) -> Decoder:
    self.model_config = model_config
    return Decoder(model_config)

  def partition(self, params: Any) -> tuple[Any, Any]:
    return params, (jax.tree.map(_copy, params) if self.uses_reference else None)

  def policy_of(self, params: Any, frozen: Any) -> tuple[Any, Any]:
    """(the policy's, the reference's) Decoder parameters from the state's two trees (the
    LoRA wrapper replaces this: lm/stages/lora.py)."""
    return params, frozen

  def loss(self, apply: Callable, params: Any, frozen: Any, batch: dict[str, jax.Array]):
    del frozen  # the reference's log-probs came with the rollouts
    logits = rollout_lib.completion_logits(apply, params, batch, self.prompt_len,
                                           self.rl.temperature)           # [B, N, V]
    logps = rollout_lib.logprobs_of(logits, batch["targets"][:, self.prompt_len - 1:])
    old = batch["old_logps"] if "old_logps" in batch else jax.lax.stop_gradient(logps)
    pieces = losses.grpo_per_token(logps, old, batch.get("ref_logps"), batch["advantages"],
                                   self.rl.epsilon, self.epsilon_high, self.rl.beta,
                                   self.rl.kl_estimator)
    mask = batch["completion_mask"]
    total, weight = losses.aggregate(pieces["loss"], mask, self.rl.loss_type, self.new_tokens)
    entropy = jax.lax.stop_gradient(losses.entropy_from_logits(logits))
    sums = {"weight": weight, "loss": total, "tokens": jnp.sum(mask),
            "kl": jnp.sum(jax.lax.stop_gradient(pieces["kl"]) * mask),
            "entropy": jnp.sum(entropy * mask),
            "clip_ratio": jnp.sum(pieces["clipped"] * mask)}
    return total, sums

  def eval_sums(self, apply: Callable, params: Any, frozen: Any, batch: dict[str, jax.Array]):
    del frozen
    return pretrain.loss_fn(apply, params, batch)[1]

  def eval_metrics(self, totals: dict[str, float], eval_set: Any) -> dict[str, float]:
    if self.held_out is None or not totals:
      return {}
    return self.held_out.eval_metrics(totals, eval_set)

  def train_batches(self, records: Sequence, config: ml_collections.ConfigDict, rows: slice,
                    seed: int) -> pipeline_lib.Batches:
    return pipeline_lib.padded_batches(records, self.row, config, rows, seed)

  def eval_set(self, records: Sequence, config: ml_collections.ConfigDict, rows: slice):
    if self.held_out is None:
      return pipeline_lib.EvalSet(batches=[], documents=0, tokens=0, bytes=0)
    return self.held_out.eval_set(records, config, rows)

  def example_batch(self, batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
    del seq_len
    b, n, t = batch_size * self.group_size, self.new_tokens, self.prompt_len + self.new_tokens - 1
    batch = {"inputs": np.ones((b, t), np.int32), "targets": np.ones((b, t), np.int32),
             "positions": np.zeros((b, t), np.int32), "segment_ids": np.ones((b, t), np.int32),
             "completion_mask": np.ones((b, n), np.float32),
             "advantages": np.zeros(b, np.float32)}
    if self.uses_reference:
      batch["ref_logps"] = np.zeros((b, n), np.float32)
    if self.rl.num_iterations > 1:
      batch["old_logps"] = np.zeros((b, n), np.float32)
    return batch

  def between_steps(self, state: Any, step: int) -> Any:
    del step
    return state

  # -- Rollouts -------------------------------------------------------------------------------

  def _make_rollout_fn(self, sharding: Any) -> Callable:
    """(params, frozen, prompts [B, P], start [B], key) -> the device part of a train batch."""
    model_config, settings, g = self.model_config, self.settings, self.group_size
    model = Decoder(model_config)
    apply = lambda p, t, **kw: model.apply({"params": p}, t, **kw)
    scores_old, temperature = self.rl.num_iterations > 1, self.rl.temperature

    def fn(params, frozen, prompts, start, key):
      policy, reference = self.policy_of(params, frozen)
      prompts, start = jnp.repeat(prompts, g, axis=0), jnp.repeat(start, g, axis=0)  # [BG, P]
      out = rollout_lib.generate(model_config, settings, policy, prompts, start, key)
      rows = rollout_lib.training_rows(out)
      batch = {**rows, "completion_mask": out.mask, "length": out.length, "reason": out.reason,
               "sampled_logps": out.logprobs}
      if self.uses_reference:
        batch["ref_logps"] = rollout_lib.completion_logprobs(apply, reference, rows,
                                                             out.prompt_len, temperature)
      if scores_old:
        batch["old_logps"] = rollout_lib.completion_logprobs(apply, policy, rows,
                                                             out.prompt_len, temperature)
      return batch

    return jax.jit(fn, out_shardings=sharding)

  def rollout_key(self, step: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(self.config.seed), step)

  def _rollout(self, state: Any, prompt_batch: dict, step: int) -> tuple[dict, dict]:
    """The train batch of step `step`'s rollouts and their host-side metrics."""
    sharding = rules_lib.batch_sharding(state.step.sharding.mesh)
    if self._rollout_fn is None:
      self._rollout_fn = self._make_rollout_fn(sharding)
    begin = time.perf_counter()
    device = self._rollout_fn(state.params, state.frozen, prompt_batch["prompt"],
                              prompt_batch["start"], self.rollout_key(step))
    host = rollout_lib.to_host({k: device[k] for k in ("targets", "length", "reason")})
    records = [prompts_lib.decode_record(r) for r in rollout_lib.to_host(prompt_batch["record"])]
    records = [r for r in records for _ in range(self.group_size)]           # [B G]
    completions = host["targets"][:, self.prompt_len - 1:]                    # [B G, N]
    texts = rollout_lib.completion_texts(self.tokenizer, completions, host["length"],
                                         host["reason"])
    user = [prompts_lib.last_user_text(r, tuple(self.fields)) for r in records]
    total, terms = self.reward(user, texts, records)
    advantages = np.asarray(losses.group_advantages(total, self.group_size,
                                                    self.rl.scale_rewards), np.float32)
    seconds = time.perf_counter() - begin
    batch = {k: v for k, v in device.items() if k not in ("length", "reason", "sampled_logps")}
    batch["advantages"] = jax.device_put(advantages, sharding)
    grouped = total.reshape(-1, self.group_size)
    lengths = host["length"].astype(np.float64)
    metrics = {"reward": float(total.mean()), "reward_std": float(total.std(ddof=1)),
               "frac_reward_zero_std": float((grouped.std(axis=1) == 0).mean()),
               "completions/mean_length": float(lengths.mean()),
               "completions/clipped_ratio": float(np.mean(
                   [rollout_lib.REASONS.get(int(r)) == "max_tokens" for r in host["reason"]])),
               "rollout/tokens_per_sec": float(lengths.sum() / max(seconds, 1e-9)),
               **{f"rewards/{name}/mean": float(v.mean()) for name, v in terms.items()}}
    self._write_samples(step, user, texts, records, total, terms)
    return batch, metrics

  def _write_samples(self, step: int, user, texts, records, total, terms) -> None:
    every = self.rl.samples_every
    if not every or step % every or self._samples is None:
      return
    picks = list(range(0, len(texts), max(len(texts) // max(self.rl.samples, 1), 1)))
    self._samples.write(step, [
        {"prompt": user[i], "completion": texts[i], "answer": records[i].get("answer"),
         "reward": float(total[i]), **{f"rewards/{n}": float(v[i]) for n, v in terms.items()}}
        for i in picks[:self.rl.samples]])

  def make_step(self, setup: Any, workdir: str) -> Callable:
    """The loop's step: the prompt batch becomes rollouts from the state's policy (every
    rl.num_iterations steps; the steps between reuse them), then one update of `loss`."""
    update = loop_lib.jit_train_step(setup)

    def step_fn(state: Any, batch: dict) -> tuple[Any, dict]:
      step = int(jax.device_get(state.step))
      if self._samples is None:  # the first step of this process: a resumed run's too
        self._samples = samples_lib.SamplesLog(workdir, step)
      train_batch, metrics = self._rollouts(state, batch, step)
      state, update_metrics = update(state, train_batch)
      return state, {**update_metrics, **metrics}

    return step_fn

  def _rollouts(self, state: Any, batch: dict, step: int) -> tuple[dict, dict]:
    """The batch step `step` trains on and its host metrics: rollouts from the state's policy
    every rl.num_iterations steps (the steps between reuse them)."""
    jax.block_until_ready(state.params)  # the previous update, timed below
    now = time.perf_counter()
    update_seconds = None if self._last_return is None else now - self._last_return
    fresh = step % self.rl.num_iterations == 0
    if fresh or self._buffer is None:
      if not fresh:
        logging.warning("Resumed at step %d, inside a batch of %d rollouts: they are "
                        "generated again from the current policy", step,
                        self.rl.num_iterations)
      self._buffer = self._rollout(state, batch, step - step % self.rl.num_iterations)
    train_batch, metrics = self._buffer
    metrics = dict(metrics)
    if update_seconds is not None:
      rows, columns = train_batch["inputs"].shape
      metrics["update/tokens_per_sec"] = rows * columns / update_seconds
    self._last_return = time.perf_counter()
    return train_batch, metrics
