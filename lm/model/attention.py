"""Self-attention: RoPE (with Llama 3 scaling), MHA / GQA / MQA, causal, segment and window masks.

Letters: B batch, T query length, S key length, D model dim, N query heads, K kv heads,
H head dim.

The score/softmax/value product goes through `jax.nn.dot_product_attention`, which takes
GQA directly (N a multiple of K) and on GPU dispatches to the cuDNN fused kernel.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lm.model.config import ModelConfig
from lm.model.layers import param, weight_init


def rope_inverse_frequencies(config: ModelConfig) -> np.ndarray:
  """Per-pair rotation frequencies [H/2]; "llama3" rescales the low frequencies (Llama 3.1)."""
  head_dim = config.resolved_head_dim
  inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
  if config.rope_scaling == "llama3":
    factor, low, high = (config.rope_scaling_factor, config.rope_low_freq_factor,
                         config.rope_high_freq_factor)
    old_len = config.rope_original_max_len
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_len / wavelen - low) / (high - low)
    scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    is_medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    inv_freq = np.where(is_medium, (1 - smooth) * inv_freq / factor + smooth * inv_freq, scaled)
  return inv_freq.astype(np.float32)


def rope_angles(config: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
  """sin and cos of position * frequency, each [B, T, H/2], in float32."""
  angles = positions[..., None].astype(jnp.float32) * rope_inverse_frequencies(config)
  return jnp.sin(angles), jnp.cos(angles)


def apply_rope(x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
  """Rotates pairs (i, i + H/2) of every head (the Llama / GPT-NeoX "rotate half" layout)."""
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)  # [B, T, N, H/2] each
  sin, cos = sin[:, :, None, :], cos[:, :, None, :]
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)


def attention_mask(segment_ids: jax.Array, sliding_window: int) -> jax.Array:
  """Boolean [B, 1, T, T]: causal, within one packed document, and within the window."""
  t = segment_ids.shape[-1]
  query, key = np.arange(t)[:, None], np.arange(t)[None, :]
  allowed = key <= query
  if sliding_window:
    allowed &= query - key < sliding_window
  same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]  # [B, T, T]
  return (same_segment & allowed)[:, None, :, :]


class Attention(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array, sin: jax.Array | None, cos: jax.Array | None,
               mask: jax.Array | None) -> jax.Array:
    """x: [B, T, D]; mask: None (plain causal) or boolean [B, 1, T, T]."""
    cfg = self.config
    dt = cfg.compute_dtype
    n, k, h, d = cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim, cfg.d_model
    qkv_bias = cfg.attention_bias or cfg.use_bias

    def project(name, heads, heads_axis):
      w = param(self, name, (d, heads, h), ("embed", heads_axis, "head_dim"), weight_init(cfg))
      y = jnp.einsum("BTD,DNH->BTNH", x, w.astype(dt))
      if qkv_bias:
        y = y + param(self, name + "_bias", (heads, h), (heads_axis, "head_dim"),
                      nn.initializers.zeros).astype(dt)
      return y

    query = project("query", n, "heads")     # [B, T, N, H]
    key = project("key", k, "kv_heads")      # [B, S, K, H]
    value = project("value", k, "kv_heads")  # [B, S, K, H]
    if sin is not None:
      query, key = apply_rope(query, sin, cos), apply_rope(key, sin, cos)

    window = (cfg.sliding_window - 1, 0) if cfg.sliding_window and mask is None else None
    out = jax.nn.dot_product_attention(query, key, value, mask=mask, is_causal=mask is None,
                                       local_window_size=window)  # [B, T, N, H]
    out = nn.with_logical_constraint(out, ("act_batch", "act_len", "act_heads", None))

    w_out = param(self, "out", (n, h, d), ("heads", "head_dim", "embed"),
                  weight_init(cfg, (2 * cfg.num_layers) ** -0.5))
    y = jnp.einsum("BTNH,NHD->BTD", out, w_out.astype(dt))
    if cfg.use_bias:
      y = y + param(self, "out_bias", (d,), ("embed",), nn.initializers.zeros).astype(dt)
    return y
