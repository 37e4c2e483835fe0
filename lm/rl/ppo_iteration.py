"""One PPO iteration per training step, and PPO's evaluation (lm/stages/ppo.py's stage).

Letters: B rollouts, P prompt columns, N response columns, T = P + N - 1.

    Iteration(stage, setup, workdir)(state, prompts) -> (state, metrics)

1. rollouts: B responses sampled from the live policy (`state.params["policy"]`) inside jit
   (lm/rl/rollout.py), each row seeded from a key folded from `config.seed` and the step, so
   a resumed run samples the same responses;
2. scores: the responses' text scored on the host by `rl.reward` (lm/rl/rewards.py: the
   reward model, the true reward, ...), minus `ppo.missing_eos_penalty` for a response that
   never ended its turn;
3. experience (one jitted forward pass of the policy, the value model and the reference):
   log-probs, values, per-token KL, penalized rewards, GAE advantages and returns;
4. `ppo.epochs` passes over the experience in `ppo.num_minibatches` shuffled minibatches,
   each one update of the stage's loss by the loop's own train step (guard, optimizer);
5. the KL coefficient adapts to the KL of this batch (when `ppo.kl_target` is set);
6. every `rl.samples_every` steps, the first `rl.samples` prompts and responses go to
   `samples.jsonl` in the workdir (lm/rl/samples.py: once per step, resumed or not).
The state's step counts iterations (the loop's steps), not updates.

Evaluation samples one response per held-out prompt (the key fixed by `config.seed`, so
every evaluation draws alike) and reports its reward, each reward term, the KL to the
reference per response (k1, summed over its tokens) and the length; and the reward and its
terms of the greedy response (eval_greedy/reward, eval_greedy/rewards/<name>).
"""

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lm.infer import chat
from lm.infer import engine as engine_lib
from lm.model import Decoder
from lm.rl import losses
from lm.rl import ppo_math
from lm.rl import rollout as rollout_lib
from lm.rl import samples as samples_lib
from lm.train import loop as loop_lib
from lm.train import optim

_EVAL_KEY = 2 ** 30   # folded into the seed's key for evaluation; training folds steps below it
_END_TURN = next(k for k, v in engine_lib.REASONS.items() if v == "end_turn")


def updates_config(train: ml_collections.ConfigDict, updates_per_step: int
                   ) -> ml_collections.ConfigDict:
  """`train` with steps and warmup counted in optimizer updates, not iterations."""
  out = ml_collections.ConfigDict(train.to_dict())
  out.steps = train.steps * updates_per_step
  out.warmup_steps = train.warmup_steps * updates_per_step
  return out


class _Sampler:
  """Jitted sampling, host rewards and the reference's log-probs, shared by both classes."""

  def __init__(self, stage: Any, setup: Any):
    rl = stage.rl
    self.stage, self.setup = stage, setup
    self.settings = rollout_lib.Settings(
        max_new_tokens=rl.max_new_tokens, temperature=rl.temperature, top_k=rl.top_k,
        top_p=rl.top_p, stop_ids=tuple(chat.stop_token_ids(setup.tokenizer)),
        layout=rl.rollout_layout)
    self.reward = stage.reward
    self.reference = Decoder(setup.model_config)
    self.key = jax.random.key(setup.config.seed)
    model_config = setup.model_config

    def sample(policy, prompts, start, key, group, settings):
      prompts, start = jnp.repeat(prompts, group, axis=0), jnp.repeat(start, group, axis=0)
      return rollout_lib.generate(model_config, settings, policy, prompts, start, key)

    self._sample = jax.jit(sample, static_argnames=("group", "settings"))

  def sample(self, params: Any, batch: dict, key: jax.Array, group: int,
             settings: rollout_lib.Settings | None = None):
    """`group` responses to each prompt of `batch` (rl.* settings unless `settings`)."""
    return self._sample(params["policy"], batch["prompt"], batch["start"], key, group=group,
                        settings=settings or self.settings)

  def reference_logprobs(self, frozen: Any, rows: dict) -> jax.Array:
    """[B, N]: the reference's log-probs of the response tokens (sampling temperature)."""
    apply = lambda p, tokens, **kw: self.reference.apply({"params": p}, tokens, **kw)
    return rollout_lib.completion_logprobs(apply, frozen["reference"], rows,
                                           self.stage.prompt_len, self.stage.rl.temperature)

  def score(self, rollout: Any, index: jax.Array, group: int, records: Any
            ) -> tuple[np.ndarray, dict[str, np.ndarray], list[str], list[str], np.ndarray]:
    """(scores [B], reward terms, prompts, responses, ended [B]) on the host: every process
    scores every row (the reward functions see text)."""
    host = rollout_lib.to_host({"tokens": rollout.completions, "length": rollout.length,
                                "reason": rollout.reason, "index": index})
    texts = rollout_lib.completion_texts(self.setup.tokenizer, host["tokens"], host["length"],
                                         host["reason"])
    rows = [records[int(i)] for i in np.repeat(host["index"], group)]
    prompts = [self.stage.prompt_text(r) for r in rows]
    total, terms = self.reward(prompts, texts, rows)
    ended = host["reason"] == _END_TURN
    return total, terms, prompts, texts, ended

  def to_device(self, values: np.ndarray) -> jax.Array:
    """A host array [B, ...] laid out over the batch axes."""
    values = np.asarray(values, np.float32)
    return jax.make_array_from_callback(values.shape, self.setup.data_sharding,
                                        lambda index: values[index])


class Iteration(_Sampler):
  """The stage's training step: one PPO iteration (see the module docstring)."""

  def __init__(self, stage: Any, setup: Any, workdir: str):
    super().__init__(stage, setup)
    p, t = stage.p, setup.config.train
    self.workdir = workdir
    self.updates = p.epochs * p.num_minibatches
    train = updates_config(t, self.updates)
    model = setup.model

    def apply(params, tokens, **kwargs):
      return model.apply({"params": params}, tokens, **kwargs)

    def experience(params, frozen, rollout, scores, kl_coef):
      rows = rollout_lib.training_rows(rollout)
      mask = rollout.mask                                                # [B, N]
      logprobs, values, _ = stage.forward(apply, params, {**rows, "mask": mask})
      ref = self.reference_logprobs(frozen, rows)
      kl = losses.kl_per_token(logprobs, ref, p.kl_estimator) * mask    # [B, N]
      values = values * mask
      rewards = ppo_math.penalized_rewards(scores, kl, mask, kl_coef)
      if p.whiten_rewards:
        rewards = ppo_math.whiten(rewards, mask, shift_mean=False)
      advantages, returns = ppo_math.gae(rewards, values, mask, p.gamma, p.lam)
      advantages = ppo_math.whiten(advantages, mask)
      kl_per_response = jnp.sum(kl, axis=1)                              # [B]
      non_score = -kl_coef * kl_per_response
      metrics = {"objective/kl": jnp.mean(kl_per_response),
                 "objective/entropy": jnp.mean(jnp.sum(-logprobs * mask, axis=1)),
                 "objective/non_score_reward": jnp.mean(non_score),
                 "objective/rlhf_reward": jnp.mean(scores + non_score),
                 "objective/scores": jnp.mean(scores), "objective/scores_std": jnp.std(scores),
                 "val/explained_variance": ppo_math.explained_variance(values, returns, mask),
                 "completions/mean_length": jnp.mean(jnp.sum(mask, axis=1))}
      exp = {**rows, "mask": mask, "old_logprobs": logprobs, "old_values": values,
             "advantages": advantages, "returns": returns}
      return exp, metrics

    def select(exp, key, number):  # minibatch `number` of a pass shuffled by `key`
      order = jax.random.permutation(key, stage.rollouts)
      rows = jax.lax.dynamic_slice_in_dim(order, number * stage.minibatch, stage.minibatch)
      return jax.tree.map(lambda x: x[rows], exp)

    self._experience = jax.jit(experience)
    self._select = jax.jit(select, out_shardings=setup.data_sharding)
    self._update = loop_lib.jit_train_step(setup, optim.make_optimizer(train), train)
    self._samples: samples_lib.SamplesLog | None = None

  def __call__(self, state: Any, batch: dict) -> tuple[Any, dict[str, float]]:
    stage, rl = self.stage, self.stage.rl
    step = int(jax.device_get(state.step))
    if self._samples is None:  # this process's first iteration (a resumed run's too)
      self._samples = samples_lib.SamplesLog(self.workdir, step + 1)
    key = jax.random.fold_in(self.key, step)
    start = time.perf_counter()
    rollout = self.sample(state.params, batch, jax.random.fold_in(key, 0), rl.group_size)
    total, terms, prompts, texts, ended = self.score(rollout, batch["index"], rl.group_size,
                                                     stage.records)
    rollout_seconds, start = time.perf_counter() - start, time.perf_counter()
    scores = total - stage.p.missing_eos_penalty * ~ended
    kl_coef = stage.controller.value
    exp, metrics = self._experience(state.params, state.frozen, rollout,
                                    self.to_device(scores), jnp.float32(kl_coef))
    update_metrics = []
    for epoch in range(stage.p.epochs):
      shuffle = jax.random.fold_in(jax.random.fold_in(key, 1), epoch)
      for number in range(stage.p.num_minibatches):
        minibatch = self._select(exp, shuffle, number)
        state = state.replace(step=jnp.asarray(step, jnp.int32))  # the guard records it
        state, m = self._update(state, minibatch)
        update_metrics.append(m)
    update_metrics, metrics = jax.device_get((update_metrics, metrics))
    update_seconds = time.perf_counter() - start  # the experience pass and the updates
    out = {name: float(np.mean([m[name] for m in update_metrics])) for name in update_metrics[0]}
    out.update({"skipped": float(sum(m["skipped"] for m in update_metrics)),
                "skipped_updates": float(update_metrics[-1]["skipped_updates"]),
                "lr": float(update_metrics[-1]["lr"])})
    out.update({name: float(value) for name, value in metrics.items()})
    out.update({"objective/kl_coef": kl_coef, "completions/ended_ratio": float(np.mean(ended)),
                "rewards/mean": float(np.mean(total)), "rewards/std": float(np.std(total))})
    out.update({f"rewards/{name}/mean": float(np.mean(v)) for name, v in terms.items()})
    columns = stage.prompt_len + stage.new_tokens - 1
    out.update({  # generated tokens per second of sampling and scoring; trained per update
        "rollout/tokens_per_sec": out["completions/mean_length"] * stage.rollouts
                                  / rollout_seconds,
        "update/tokens_per_sec": stage.rollouts * columns * stage.p.epochs / update_seconds})
    stage.controller.update(out["objective/kl"], stage.rollouts)
    if rl.samples_every and (step + 1) % rl.samples_every == 0:
      self._samples.write(step + 1, [
          {"prompt": prompts[i], "completion": texts[i], "reward": float(total[i]),
           **{name: float(v[i]) for name, v in terms.items()}}
          for i in range(min(rl.samples, len(texts)))])
    return state.replace(step=jnp.asarray(step + 1, jnp.int32)), out


class Evaluation(_Sampler):
  """The stage's evaluation step: sums over one batch of held-out prompts."""

  def __init__(self, stage: Any, setup: Any):
    super().__init__(stage, setup)

    def kl_and_length(frozen, policy_logprobs, rollout):
      rows = rollout_lib.training_rows(rollout)
      mask = rollout.mask
      kl = (policy_logprobs - self.reference_logprobs(frozen, rows)) * mask
      return jnp.sum(kl, axis=1), jnp.sum(mask, axis=1)

    def policy_logprobs(params, rollout):
      rows = rollout_lib.training_rows(rollout)
      return self.reference_logprobs({"reference": params["policy"]}, rows) * rollout.mask

    self._kl = jax.jit(lambda params, frozen, rollout: kl_and_length(
        frozen, policy_logprobs(params, rollout), rollout))

  def __call__(self, params: Any, frozen: Any, batch: dict) -> dict[str, float]:
    rollout = self.sample(params, batch, jax.random.fold_in(self.key, _EVAL_KEY), 1)
    total, terms, *_ = self.score(rollout, batch["index"], 1, self.stage.eval_records)
    kl, length = jax.device_get(self._kl(params, frozen, rollout))
    w = rollout_lib.to_host(batch["weight"])
    sums = {"weight": float(np.sum(w)), "reward": float(np.sum(w * total)),
            "kl": float(np.sum(w * kl)), "length": float(np.sum(w * length))}
    sums.update({f"rewards/{name}": float(np.sum(w * v)) for name, v in terms.items()})
    # The greedy reply too: what the policy answers, without the sampling noise (its KL is
    # not a KL, the sampled one above is).
    greedy = self.sample(params, batch, jax.random.fold_in(self.key, _EVAL_KEY), 1,
                         dataclasses.replace(self.settings, temperature=0.0))
    total, terms, *_ = self.score(greedy, batch["index"], 1, self.stage.eval_records)
    sums["greedy/reward"] = float(np.sum(w * total))
    sums.update({f"greedy/rewards/{name}": float(np.sum(w * v)) for name, v in terms.items()})
    return sums
