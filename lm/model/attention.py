"""Self-attention: RoPE (with Llama 3 scaling), MHA / GQA / MQA, causal, segment and window
masks, and the key/value cache for decoding.

Letters: B batch, T query length, S key length (cache slots), D model dim, N query heads,
K kv heads, H head dim, L layers.

The score/softmax/value product goes through one of three kernels (`model.attention`,
resolved by `attention_kernel`): "xla", `jax.nn.dot_product_attention`'s XLA path, which
materialises the [B, N, T, T] scores (float32); "cudnn", the same call with
implementation="cudnn" (NVIDIA's fused flash attention); "splash", the TPU Pallas kernel
(lm/model/splash.py). All take GQA directly (N a multiple of K). Decoding always uses "xla":
one query per row leaves nothing to fuse, and the cache mask is arbitrary.

Decoding keeps the keys and values of past tokens in a `KVCache`, one [B, K, S, H] array
per layer. Time t (the t-th token fed to the model, the same for every row: prompts are
left-padded) lives in slot t % S, so
a cache with S >= every time is a plain array and a sliding-window model gets a ring buffer
of S = window slots. Which slot holds which time is arithmetic on `index` alone, and
`start` says where each row's real tokens begin; `cache_mask` turns both into the boolean
mask for `jax.nn.dot_product_attention`.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from lm.model.config import ModelConfig
from lm.model.layers import param, token_matmul, weight_init
from lm.model.splash import BLOCK as SPLASH_BLOCK
from lm.model.splash import splash_attention


def attention_kernel(config: ModelConfig, seq_len: int, backend: str | None = None) -> str:
  """The kernel "auto" means here: splash on TPU (rows a multiple of its block), cuDNN on
  GPU in a 16-bit compute dtype (its only ones), else XLA. Explicit choices are kept."""
  if config.attention != "auto":
    return config.attention
  backend = backend or jax.default_backend()
  if backend == "tpu" and seq_len % SPLASH_BLOCK == 0:
    return "splash"
  if backend in ("gpu", "cuda") and config.dtype in ("bfloat16", "float16"):
    return "cudnn"
  return "xla"


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


# Logical axes of each layer's cached keys and values [B, K, S, H] (rules: lm/parallel/rules.py).
CACHE_AXES = ("act_batch", "act_kv_heads", "act_len", None)


@struct.dataclass
class KVCache:
  """Keys and values of every layer: one array per layer, laid out [B, K, S, H].

  One array per layer, rather than one stacked [L, ...] array, and kv heads before slots:
  on XLA's CPU backend (the one measured) a decode step then writes its slot of each layer
  in place and attention reads the slots without a transpose; a stacked cache was copied
  whole at every layer of every step.
  """
  key: tuple[jax.Array, ...]    # L x [B, K, S, H] in the compute dtype, RoPE applied
  value: tuple[jax.Array, ...]  # L x [B, K, S, H]
  index: jax.Array  # [] int32: the time of the next token fed in (tokens so far)
  start: jax.Array  # [B] int32: the time of each row's first real token (padding before it)

  @property
  def slots(self) -> int:
    return self.key[0].shape[2]

  @classmethod
  def zeros(cls, config: ModelConfig, batch: int, slots: int,
            start: jax.Array | None = None) -> "KVCache":
    """An empty cache; `slots` >= the tokens a row will hold, or >= the window (a ring)."""
    shape = (batch, config.num_kv_heads, slots, config.resolved_head_dim)

    def zeros():
      return tuple(nn.with_logical_constraint(jnp.zeros(shape, config.compute_dtype), CACHE_AXES)
                   for _ in range(config.num_layers))

    start = jnp.zeros((batch,), jnp.int32) if start is None else start.astype(jnp.int32)
    return cls(key=zeros(), value=zeros(), index=jnp.zeros((), jnp.int32), start=start)


def cache_slots(config: ModelConfig, max_tokens: int) -> int:
  """Slots for rows of up to `max_tokens` tokens: all of them, or the window when smaller."""
  if config.sliding_window:
    return min(max_tokens, config.sliding_window)
  return max_tokens


def writes_first(config: ModelConfig, new_tokens: int, slots: int) -> bool:
  """Whether T new tokens can be written into the cache before attending to it.

  True unless a ring buffer would overwrite keys that the chunk's earliest queries still
  need (prefilling more than `slots - window + 1` tokens of a sliding-window model); then
  the queries attend to the old cache and the new keys side by side. A cache smaller than
  the window is no ring: it holds every token of its rows (see `cache_slots`).
  """
  window = config.sliding_window
  return not window or slots < window or new_tokens <= slots - window + 1


def _slot_times(last: jax.Array, slots: int) -> jax.Array:
  """[S] the time each slot holds when `last` is the newest time written (negative: empty)."""
  s = jnp.arange(slots)
  return last - jnp.mod(last - s, slots)


def cache_mask(config: ModelConfig, cache: KVCache, new_tokens: int) -> jax.Array:
  """Boolean [B, 1, T, S] (or [B, 1, T, S + T], see `writes_first`): causal, in the window,
  and only real tokens of the row, for T tokens fed in at times index, ..., index + T - 1."""
  window = config.sliding_window
  query = cache.index + jnp.arange(new_tokens)  # [T] times
  start = cache.start[:, None, None]            # [B, 1, 1]

  def allowed(key_times):  # key_times [S'] -> [B, T, S']
    ok = (key_times[None, :] <= query[:, None]) & (key_times[None, :] >= 0)
    if window:
      ok &= query[:, None] - key_times[None, :] < window
    return ok[None] & (key_times[None, None, :] >= start)

  if writes_first(config, new_tokens, cache.slots):
    mask = allowed(_slot_times(cache.index + new_tokens - 1, cache.slots))
  else:
    mask = jnp.concatenate([allowed(_slot_times(cache.index - 1, cache.slots)),
                            allowed(query)], axis=-1)
  return mask[:, None]


def cache_positions(cache: KVCache, new_tokens: int) -> jax.Array:
  """[B, T] positions of the new tokens: time minus the row's start (0 on padding)."""
  times = cache.index + jnp.arange(new_tokens)
  return jnp.maximum(times[None, :] - cache.start[:, None], 0)


def _write(cached: jax.Array, new: jax.Array, first_time: jax.Array) -> jax.Array:
  """Writes new [B, T, K, H] at times first_time, first_time + 1, ... into cached [B, K, S, H]."""
  slots, t = cached.shape[2], new.shape[1]
  new = jnp.swapaxes(new, 1, 2).astype(cached.dtype)  # [B, K, T, H]
  if t == 1:  # decoding: one slot, updated in place
    return jax.lax.dynamic_update_slice_in_dim(cached, new, jnp.mod(first_time, slots), axis=2)
  return cached.at[:, :, jnp.mod(first_time + jnp.arange(t), slots)].set(new)


class Attention(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array, sin: jax.Array | None, cos: jax.Array | None,
               mask: jax.Array | None, cache: tuple | None = None):
    """x: [B, T, D]; mask: None (plain causal) or boolean [B, 1, T, T]; with the splash
    kernel, None or the segment ids [B, T] (it builds its masks itself).

    Decoding: cache = (keys, values, index), this layer's cached [B, K, S, H] arrays and the
    time of x's first token; mask comes from `cache_mask`. Returns (y, (keys, values)) with
    x's keys and values written into their slots.
    """
    cfg = self.config
    dt = cfg.compute_dtype
    n, k, h, d = cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim, cfg.d_model
    qkv_bias = cfg.attention_bias or cfg.use_bias

    tokens = x.reshape(-1, d)  # [B*T, D], once: q, k and v share one saved input

    def project(name, heads, heads_axis):
      w = param(self, name, (d, heads, h), ("embed", heads_axis, "head_dim"), weight_init(cfg))
      y = token_matmul(tokens, w.astype(dt)).reshape(*x.shape[:2], heads, h)  # [B, T, heads, H]
      if qkv_bias:
        y = y + param(self, name + "_bias", (heads, h), (heads_axis, "head_dim"),
                      nn.initializers.zeros).astype(dt)
      return y

    query = project("query", n, "heads")     # [B, T, N, H]
    key = project("key", k, "kv_heads")      # [B, S, K, H]
    value = project("value", k, "kv_heads")  # [B, S, K, H]
    if sin is not None:
      query, key = apply_rope(query, sin, cos), apply_rope(key, sin, cos)

    new_cache = None
    if cache is not None:
      keys, values, index = cache  # [B, K, S, H] each
      t, slots = x.shape[1], keys.shape[2]
      if writes_first(cfg, t, slots):
        keys, values = _write(keys, key, index), _write(values, value, index)
        key = jnp.swapaxes(keys, 1, 2).astype(dt)  # [B, S, K, H]: a view for the attention
        value = jnp.swapaxes(values, 1, 2).astype(dt)
      else:  # a long prefill into a ring: attend to [old slots, new keys], then keep the last
        kept = min(t, slots)
        old_key, old_value = jnp.swapaxes(keys, 1, 2), jnp.swapaxes(values, 1, 2)
        keys = _write(keys, key[:, t - kept:], index + t - kept)
        values = _write(values, value[:, t - kept:], index + t - kept)
        key = jnp.concatenate([old_key.astype(dt), key], axis=1)        # [B, S + T, K, H]
        value = jnp.concatenate([old_value.astype(dt), value], axis=1)
      new_cache = (keys, values)

    kernel = "xla" if cache is not None else attention_kernel(cfg, x.shape[1])
    if kernel == "splash":
      out = splash_attention(query, key, value, mask, cfg.sliding_window)  # [B, T, N, H]
    else:
      window = (cfg.sliding_window - 1, 0) if cfg.sliding_window and mask is None else None
      out = jax.nn.dot_product_attention(
          query, key, value, mask=mask, is_causal=mask is None, local_window_size=window,
          implementation="cudnn" if kernel == "cudnn" else None)  # [B, T, N, H]
    out = nn.with_logical_constraint(out, ("act_batch", "act_len", "act_heads", None))

    w_out = param(self, "out", (n, h, d), ("heads", "head_dim", "embed"),
                  weight_init(cfg, (2 * cfg.num_layers) ** -0.5))
    y = token_matmul(out, w_out.astype(dt), contract=2)  # [B, T, D]
    if cfg.use_bias:
      y = y + param(self, "out_bias", (d,), ("embed",), nn.initializers.zeros).astype(dt)
    return y if cache is None else (y, new_cache)
