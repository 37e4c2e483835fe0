"""The math of policy-gradient RL on language models, as pure functions of arrays.

Letters: B completions (G per prompt: B = P x G, a prompt's group adjacent), N completion
tokens.

Everything here is per token or per completion and takes masks explicitly, so the stages
(lm/stages/grpo.py, ppo.py) only gather log-probs and call these; the tests compare each one
with an independent PyTorch computation.

KL estimators (Schulman, "Approximating KL divergence", 2020), per token, of KL(pi || ref)
from samples of pi, with log r = log ref(x) - log pi(x):
  k1 = -log r                 unbiased, high variance, can be negative
  k3 = (r - 1) - log r        unbiased, low variance, always >= 0 (GRPO / TRL's choice)
"""

import jax
import jax.numpy as jnp

KL_ESTIMATORS = ("k1", "k3")
SCALE_REWARDS = ("group", "batch", "none")
LOSS_TYPES = ("sequence", "token", "dr_grpo")


def kl_per_token(policy_logps: jax.Array, reference_logps: jax.Array,
                 estimator: str = "k3") -> jax.Array:
  """The estimator of KL(policy || reference) at each sampled token: [...] like its inputs."""
  log_ratio = reference_logps - policy_logps
  if estimator == "k1":
    return -log_ratio
  if estimator == "k3":
    return jnp.exp(log_ratio) - 1.0 - log_ratio
  raise ValueError(f"rl.kl_estimator={estimator!r} is not one of {list(KL_ESTIMATORS)}")


def group_advantages(rewards: jax.Array, group_size: int, scale: str = "group",
                     eps: float = 1e-4) -> jax.Array:
  """Advantages [B] of rewards [B]: each minus its group's mean, divided by the group's std
  ("group"), the whole batch's std ("batch", as Liu et al.'s Dr. GRPO note suggests against
  difficulty bias), or nothing ("none"). Standard deviations are unbiased (torch.std's), plus
  eps, as TRL computes them."""
  grouped = rewards.reshape(-1, group_size)                       # [P, G]
  centered = grouped - jnp.mean(grouped, axis=1, keepdims=True)
  if scale == "group":
    centered = centered / (jnp.std(grouped, axis=1, keepdims=True, ddof=1) + eps)
  elif scale == "batch":
    centered = centered / (jnp.std(rewards, ddof=1) + eps)
  elif scale != "none":
    raise ValueError(f"rl.scale_rewards={scale!r} is not one of {list(SCALE_REWARDS)}")
  return centered.reshape(-1)


def clipped_objective(logps: jax.Array, old_logps: jax.Array, advantages: jax.Array,
                      epsilon: float, epsilon_high: float
                      ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(per-token loss [B, N], ratio [B, N], clipped [B, N] as 0/1) of PPO's clipped surrogate:
  -min(r A, clip(r, 1 - eps, 1 + eps_high) A) with r = exp(logps - old_logps), A [B] per
  completion. `clipped` marks tokens where the clipped term is the smaller (no gradient)."""
  ratio = jnp.exp(logps - old_logps)
  a = advantages[:, None]                                        # [B, 1]
  unclipped = ratio * a
  clipped = jnp.clip(ratio, 1.0 - epsilon, 1.0 + epsilon_high) * a
  return -jnp.minimum(unclipped, clipped), ratio, (clipped < unclipped).astype(jnp.float32)


def aggregate(per_token: jax.Array, mask: jax.Array, loss_type: str, max_tokens: int
              ) -> tuple[jax.Array, jax.Array]:
  """(summed loss, weight) whose quotient is the loss of the batch, for the loop's
  `sum / weight` convention (lm/train/loop.py), from per-token losses and mask [B, N]:

    sequence   mean over each completion's tokens, then over completions (GRPO paper)
    token      sum over every token of the batch / their count (DAPO; TRL's default "dapo")
    dr_grpo    sum over every token / (completions x max_tokens), a constant (Dr. GRPO)
  """
  mask = mask.astype(jnp.float32)
  if loss_type == "sequence":
    lengths = jnp.maximum(jnp.sum(mask, axis=1), 1.0)
    return jnp.sum(jnp.sum(per_token * mask, axis=1) / lengths), jnp.float32(mask.shape[0])
  if loss_type == "token":
    return jnp.sum(per_token * mask), jnp.sum(mask)
  if loss_type == "dr_grpo":
    return jnp.sum(per_token * mask), jnp.float32(mask.shape[0] * max_tokens)
  raise ValueError(f"rl.loss_type={loss_type!r} is not one of {list(LOSS_TYPES)}")


def grpo_per_token(logps: jax.Array, old_logps: jax.Array, reference_logps: jax.Array | None,
                   advantages: jax.Array, epsilon: float = 0.2, epsilon_high: float = 0.2,
                   beta: float = 0.0, estimator: str = "k3"
                   ) -> dict[str, jax.Array]:
  """GRPO's per-token pieces [B, N]: "loss" (clipped surrogate + beta KL), "kl" (zeros
  without a reference), "ratio", "clipped" (1 where clipping took the gradient away)."""
  loss, ratio, clipped = clipped_objective(logps, old_logps, advantages, epsilon, epsilon_high)
  kl = jnp.zeros_like(loss)
  if reference_logps is not None:
    kl = kl_per_token(logps, reference_logps, estimator)
    loss = loss + beta * kl
  return {"loss": loss, "kl": kl, "ratio": ratio, "clipped": clipped}


def entropy_from_logits(logits: jax.Array) -> jax.Array:
  """Entropy [...] of the softmax of logits [..., V], in nats."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)
