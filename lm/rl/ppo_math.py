"""The arithmetic of PPO for language models, as pure functions of arrays (Schulman et al. 2017;
Ziegler et al. 2019; Ouyang et al. 2022; TRL's PPOTrainer, whose conventions these follow).

Letters: B rollouts (a prompt and its sampled response), T response tokens (columns: token t
of each row's response; `mask` [B, T] is 1 on the response's tokens, its end-of-turn token
included, and 0 on the padding after it).

One PPO iteration reads:
  kl       = per-token KL estimate of the policy at sampling time to the reference   [B, T]
  rewards  = penalized_rewards(scores, kl, mask, kl_coef):  -kl_coef * kl on every token,
             plus the reward model's score [B] on the response's last token
  (optionally whiten(rewards, mask, shift_mean=False))
  advantages, returns = gae(rewards, values, mask, gamma, lam)
  advantages = whiten(advantages, mask)
then, for each PPO epoch and minibatch, the clipped policy loss on the new log-probs and the
clipped value loss on the new values, each averaged over the response tokens. The KL
coefficient follows a fixed value or the adaptive controller of Ziegler et al., which moves
it towards a target KL by at most 20% of the horizon's share per update.
"""

import jax
import jax.numpy as jnp


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """The mean of `x` over the entries where mask is 1 (a scalar)."""
  mask = mask.astype(jnp.float32)
  return jnp.sum(x * mask) / jnp.sum(mask)


def masked_var(x: jax.Array, mask: jax.Array, unbiased: bool = True) -> jax.Array:
  """The variance of `x` over the masked entries; with Bessel's correction when `unbiased`
  (as TRL's masked_var, which the whitening of rewards and advantages uses)."""
  mask = mask.astype(jnp.float32)
  variance = masked_mean(jnp.square(x - masked_mean(x, mask)), mask)
  if unbiased:
    count = jnp.sum(mask)
    variance = variance * count / jnp.maximum(count - 1.0, 1.0)
  return variance


def whiten(x: jax.Array, mask: jax.Array, shift_mean: bool = True) -> jax.Array:
  """(x - mean) / std over the masked entries, zero outside them; `shift_mean=False` keeps
  the mean (the rewards are scaled, not centred: a centred score would reward length)."""
  mean = masked_mean(x, mask)
  out = (x - mean) * jax.lax.rsqrt(masked_var(x, mask) + 1e-8)
  if not shift_mean:
    out = out + mean
  return jnp.where(mask > 0, out, 0.0)


def last_index(mask: jax.Array) -> jax.Array:
  """The column [B] of each row's last response token (0 for a row without any)."""
  t = mask.shape[-1]
  return (t - 1 - jnp.argmax(mask[:, ::-1] > 0, axis=-1)).astype(jnp.int32)


def penalized_rewards(scores: jax.Array, kl: jax.Array, mask: jax.Array, kl_coef: jax.Array
                      ) -> jax.Array:
  """Per-token rewards [B, T]: -kl_coef * kl [B, T] on every response token and the score
  [B] on the last one; zero on padding. A row without response tokens gets nothing."""
  mask = mask.astype(jnp.float32)
  rewards = -kl_coef * kl * mask                                          # [B, T]
  last = jax.nn.one_hot(last_index(mask), mask.shape[-1]) * mask          # [B, T]
  return rewards + scores[:, None] * last


def gae(rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma: float, lam: float
        ) -> tuple[jax.Array, jax.Array]:
  """(advantages, returns) [B, T] by generalised advantage estimation (Schulman et al. 2016):
  delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1}, returns = A + V,
  with V and r zero after a row's last token (the episode ends there). Zero on padding."""
  mask = mask.astype(jnp.float32)
  values, rewards = values * mask, rewards * mask
  next_values = jnp.pad(values[:, 1:], ((0, 0), (0, 1)))                  # [B, T]
  deltas = rewards + gamma * next_values - values                         # [B, T]

  def back(carry, delta):  # carry: A_{t+1} [B]
    advantage = delta + gamma * lam * carry
    return advantage, advantage

  _, advantages = jax.lax.scan(back, jnp.zeros(rewards.shape[0], rewards.dtype), deltas.T,
                               reverse=True)                              # [T, B]
  advantages = advantages.T * mask
  return advantages, (advantages + values) * mask


def clipped_policy_loss(logprobs: jax.Array, old_logprobs: jax.Array, advantages: jax.Array,
                        epsilon: float) -> tuple[jax.Array, jax.Array]:
  """(losses, clipped) per token [B, T]: max(-A r, -A clip(r, 1 - eps, 1 + eps)) with the
  ratio r = exp(logprobs - old_logprobs), and 1.0 where the clipped term is the larger (the
  clip fraction's numerator). The caller averages over the response tokens."""
  ratio = jnp.exp(logprobs - old_logprobs)
  unclipped = -advantages * ratio
  clipped = -advantages * jnp.clip(ratio, 1.0 - epsilon, 1.0 + epsilon)
  return jnp.maximum(unclipped, clipped), (clipped > unclipped).astype(jnp.float32)


def clipped_value_loss(values: jax.Array, old_values: jax.Array, returns: jax.Array,
                       clip: float) -> tuple[jax.Array, jax.Array]:
  """(losses, clipped) per token [B, T]: 0.5 max((V - R)^2, (clip(V, V_old +- c) - R)^2),
  and 1.0 where the clipped term is the larger."""
  clipped_values = jnp.clip(values, old_values - clip, old_values + clip)
  unclipped_loss = jnp.square(values - returns)
  clipped_loss = jnp.square(clipped_values - returns)
  return (0.5 * jnp.maximum(unclipped_loss, clipped_loss),
          (clipped_loss > unclipped_loss).astype(jnp.float32))


def entropy(logits: jax.Array) -> jax.Array:
  """The entropy [...] of softmax(logits [..., V]) in nats."""
  logits = logits.astype(jnp.float32)
  return jax.nn.logsumexp(logits, axis=-1) - jnp.sum(jax.nn.softmax(logits, axis=-1) * logits,
                                                     axis=-1)


def explained_variance(values: jax.Array, returns: jax.Array, mask: jax.Array) -> jax.Array:
  """1 - Var(returns - values) / Var(returns) over the masked tokens (population variances,
  as Stable-Baselines3): 1 for a perfect value function, 0 for one that predicts the mean,
  negative for worse; NaN when the returns do not vary."""
  var_returns = masked_var(returns, mask, unbiased=False)
  return jnp.where(var_returns == 0, jnp.nan,
                   1.0 - masked_var(returns - values, mask, unbiased=False) / var_returns)


def adaptive_kl_coef(coef: jax.Array, kl: jax.Array, target: float, horizon: float,
                     n_steps: int) -> jax.Array:
  """The KL coefficient after an update whose observed KL (per response, summed over its
  tokens) was `kl`: coef * (1 + clip(kl / target - 1, -0.2, 0.2) * n_steps / horizon), as
  Ziegler et al. 2019 and TRL's AdaptiveKLController (n_steps: rollouts in the update)."""
  error = jnp.clip(kl / target - 1.0, -0.2, 0.2)
  return coef * (1.0 + error * n_steps / horizon)
