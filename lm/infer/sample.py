"""A simple, correct sampler: a full forward pass per new token, no KV cache.

Prompts are padded to a power-of-two bucket so only a handful of shapes compile. The
inference engine (KV cache, batched decoding in one jitted loop) replaces this.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lm.model import Decoder


@functools.partial(jax.jit, static_argnames=("model", "top_k"))
def _next_token(model: Decoder, params, tokens: jax.Array, length: jax.Array, key: jax.Array,
                temperature: jax.Array, top_k: int) -> jax.Array:
  """Samples the token after tokens[:length] (tokens: [1, bucket], right-padded)."""
  logits = model.apply({"params": params}, tokens)[0, length - 1]  # [V]
  if top_k:
    kth_largest = jax.lax.top_k(logits, top_k)[0][-1]
    logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
  greedy = jnp.argmax(logits)
  sampled = jax.random.categorical(key, logits / jnp.maximum(temperature, 1e-6))
  return jnp.where(temperature > 0, sampled, greedy)


def generate(model: Decoder, params, prompt: np.ndarray, max_new_tokens: int,
             temperature: float = 0.8, top_k: int = 0, seed: int = 0,
             stop_id: int | None = None) -> np.ndarray:
  """Continues `prompt` (1-D token ids) by up to `max_new_tokens`; returns the new tokens.

  temperature 0 is greedy. The context is cut to the model's last `max_seq_len` tokens.
  """
  max_len = model.config.max_seq_len
  tokens = [int(t) for t in prompt]
  if not tokens:
    raise ValueError("The prompt must contain at least one token")
  key = jax.random.key(seed)
  new_tokens = []
  for _ in range(max_new_tokens):
    context = tokens[-max_len:]
    bucket = min(max(16, 1 << (len(context) - 1).bit_length()), max_len)
    padded = np.zeros((1, bucket), np.int32)
    padded[0, :len(context)] = context
    key, step_key = jax.random.split(key)
    token = int(_next_token(model, params, padded, len(context), step_key,
                            jnp.float32(temperature), top_k))
    if stop_id is not None and token == stop_id:
      break
    tokens.append(token)
    new_tokens.append(token)
  return np.array(new_tokens, np.int32)
