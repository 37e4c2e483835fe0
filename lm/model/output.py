"""The output layer and the token cross-entropy, whole or in chunks of positions.

Letters: B batch, T sequence, C chunk (positions), D model dim, V vocab.

The logits [B, T, V] in float32 are the largest activation of a large-vocabulary model
(llama3-8b at 8 x 8192 tokens per device: 32 GiB, and as much again for their gradient).
Training needs only two numbers per token from them, the target's negative log-likelihood
and log Z, so `chunked_cross_entropy` computes them C positions of every row at a time in a
`lax.scan` whose body is rematerialised (`jax.checkpoint`): the forward pass keeps no logits,
the backward pass recomputes one chunk's logits at a time and adds its share of the output
weight gradient. Memory is O(B C V) instead of O(B T V); the arithmetic is the same, so the
values equal the unchunked ones to float rounding.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

LOGIT_AXES = ("act_batch", "act_len", "act_vocab")


def output_logits(hidden: jax.Array, w: jax.Array) -> jax.Array:
  """hidden [B, T, D] times w [D, V] in the compute dtype, accumulated and returned in
  float32 -> logits [B, T, V]: the loss and softmax never see bfloat16-rounded logits.
  Tokens are flattened first, as in `token_matmul` (one contracted axis for the gradient)."""
  tokens = hidden.shape[:-1]
  logits = jnp.dot(hidden.reshape(-1, hidden.shape[-1]), w,
                   preferred_element_type=jnp.float32)  # [B*T, V]
  return nn.with_logical_constraint(logits.reshape(*tokens, w.shape[-1]), LOGIT_AXES)


def cross_entropy(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Negative log-likelihood [B, T] of each target and log Z [B, T], in float32."""
  logits = logits.astype(jnp.float32)                        # [B, T, V]
  log_z = jax.nn.logsumexp(logits, axis=-1)                  # [B, T]
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return log_z - target_logit, log_z


def chunked_cross_entropy(hidden: jax.Array, w: jax.Array, targets: jax.Array, chunk: int
                          ) -> tuple[jax.Array, jax.Array]:
  """`cross_entropy(output_logits(hidden, w), targets)` computed `chunk` positions of every
  row at a time, never holding more than [B, chunk, V] logits (forward or backward).

  Chunks run along T, not over flattened tokens, so that each chunk keeps the batch axis and
  its sharding. T need not be a multiple of `chunk`: the last chunk is padded and cut off.
  """
  b, t, d = hidden.shape
  pad = -t % chunk
  if pad:
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
  n = (t + pad) // chunk
  hidden_chunks = jnp.moveaxis(hidden.reshape(b, n, chunk, d), 1, 0)  # [n, B, C, D]
  target_chunks = jnp.moveaxis(targets.reshape(b, n, chunk), 1, 0)    # [n, B, C]

  @jax.checkpoint  # the backward pass recomputes this chunk's logits instead of saving them
  def one_chunk(w, x, y):
    return cross_entropy(output_logits(x, w), y)

  def body(carry, xs):
    return carry, one_chunk(w, *xs)

  _, (nll, log_z) = jax.lax.scan(body, None, (hidden_chunks, target_chunks))  # [n, B, C] each
  unchunk = lambda a: jnp.moveaxis(a, 0, 1).reshape(b, n * chunk)[:, :t]
  return unchunk(nll), unchunk(log_z)
