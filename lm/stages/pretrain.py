"""Pre-training: next-token cross-entropy with a token loss mask and optional z-loss.

A stage supplies the loss for the shared training step. Its contract: given the model's
apply function, the parameters and a batch, return the *summed* loss and a dict of sums
that includes `weight` (the number of tokens the loss covers). The step divides by the
total weight once, after gradient accumulation, so micro-batching never changes the result.
"""

from typing import Callable

import jax
import jax.numpy as jnp

Batch = dict[str, jax.Array]


def token_cross_entropy(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Negative log-likelihood [B, T] of each target and log Z [B, T], in float32."""
  logits = logits.astype(jnp.float32)                        # [B, T, V]
  log_z = jax.nn.logsumexp(logits, axis=-1)                  # [B, T]
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return log_z - target_logit, log_z


def loss_fn(apply: Callable, params, batch: Batch, z_loss: float = 0.0
            ) -> tuple[jax.Array, dict[str, jax.Array]]:
  logits = apply(params, batch["inputs"], positions=batch.get("positions"),
                 segment_ids=batch.get("segment_ids"))  # [B, T, V]
  nll, log_z = token_cross_entropy(logits, batch["targets"])
  mask = batch["loss_mask"].astype(jnp.float32)
  nll_sum = jnp.sum(nll * mask)
  z_sum = jnp.sum(jnp.square(log_z) * mask)
  sums = {"weight": jnp.sum(mask), "nll": nll_sum, "z_loss": z_sum}
  return nll_sum + z_loss * z_sum, sums
