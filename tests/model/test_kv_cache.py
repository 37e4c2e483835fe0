"""Tests for the decoding path of lm/model (KVCache in attention.py, Decoder(cache=...)).

Decoding with the cache must reproduce the full forward pass at every step, in float32:
prefill, later chunks and single tokens; left-padded rows; ring buffers of sliding-window
models, which hold only `window` slots.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.model import Decoder, KVCache, presets
from lm.model.attention import cache_mask, cache_slots, writes_first

TINY = presets.get("tiny")
CONFIGS = {
    "scan": TINY,
    "no_scan": TINY.replace(scan_layers=False),
    "window": TINY.replace(sliding_window=5),
    "gpt2_like": TINY.replace(norm="layernorm", mlp="gelu", positions="learned", use_bias=True,
                              tie_embeddings=True),
    "gemma_like": TINY.replace(norm_plus_one=True, mlp="geglu", tie_embeddings=True,
                               scale_embeddings=True, num_kv_heads=1),
}
B, T = 3, 24


def params_for(cfg, random_params):
  if cfg.scan_layers:
    return random_params(cfg)
  p = random_params(cfg.replace(scan_layers=True))["params"]
  out = {k: v for k, v in p.items() if k != "layers"}
  for i in range(cfg.num_layers):
    out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], p["layers"])
  return {"params": out}


@functools.cache
def _step(cfg):
  model = Decoder(cfg)
  return jax.jit(lambda variables, tokens, cache: model.apply(variables, tokens, cache=cache))


def decode(cfg, variables, tokens, chunks, start=None, slots=None):
  """Logits [B, T, V] from feeding `tokens` chunk by chunk (sizes `chunks`, then 1s)."""
  batch, length = tokens.shape
  start = None if start is None else jnp.asarray(start)
  cache = KVCache.zeros(cfg, batch, slots or cache_slots(cfg, length), start)
  sizes = list(chunks) + [1] * (length - sum(chunks))
  logits, at = [], 0
  for size in sizes:
    out, cache = _step(cfg)(variables, jnp.asarray(tokens[:, at:at + size]), cache)
    logits.append(np.asarray(out))
    at += size
  assert int(cache.index) == length
  return np.concatenate(logits, axis=1), cache


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cached_decoding_equals_full_forward_at_every_step(name, random_params, logits_of):
  """Row 0 is a plain sequence; rows 1 and 2 are its first T - 3 and T - 10 tokens after 3
  and 10 tokens of padding (`start`): padding is never attended to, and positions count from
  each row's first real token."""
  cfg = CONFIGS[name]
  variables = params_for(cfg, random_params)
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (B, T)).astype(np.int32)
  start = np.array([0, 3, 10], np.int32)
  for row, s in enumerate(start[1:], 1):
    tokens[row, s:] = tokens[0, :T - s]  # the padding before is random tokens: ignored
  expected = logits_of(cfg, variables, tokens)
  got, cache = decode(cfg, variables, tokens, chunks=[7, 4], start=start)
  np.testing.assert_allclose(got[0], expected[0], atol=2e-5, rtol=0)
  for row, s in enumerate(start[1:], 1):
    np.testing.assert_allclose(got[row, s:], expected[0, :T - s], atol=2e-5, rtol=0)
  assert len(cache.key) == len(cache.value) == cfg.num_layers
  assert cache.key[0].shape == (B, cfg.num_kv_heads, cache.slots, cfg.resolved_head_dim)
  if cfg.sliding_window:  # a bounded ring, filled past its size by the prefill and the chunk
    assert cache.slots == cfg.sliding_window == 5


def test_ring_larger_than_the_window_writes_chunks_in_place(random_params, logits_of):
  cfg = CONFIGS["window"]
  assert cache_slots(cfg, 1000) == cfg.sliding_window and cache_slots(cfg, 4) == 4
  assert writes_first(cfg, 4, 8) and not writes_first(cfg, 5, 8)
  variables = random_params(cfg)
  tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (B, T)).astype(np.int32)
  got, cache = decode(cfg, variables, tokens, chunks=[4, 4], slots=8)
  assert cache.slots == 8
  np.testing.assert_allclose(got, logits_of(cfg, variables, tokens), atol=2e-5, rtol=0)


def test_cache_mask_marks_exactly_the_visible_slots():
  cfg = TINY.replace(sliding_window=3)
  cache = KVCache.zeros(cfg, 2, 3, jnp.array([0, 2])).replace(index=jnp.array(4))
  mask = np.asarray(cache_mask(cfg, cache, 1))[:, 0, 0]  # [B, S]: one query at time 4
  # After writing time 4, slots hold times [3, 4, 2]; the window keeps times 2..4.
  np.testing.assert_array_equal(mask, [[True, True, True], [True, True, True]])
  cache = cache.replace(start=jnp.array([0, 4]))
  mask = np.asarray(cache_mask(cfg, cache, 1))[:, 0, 0]
  np.testing.assert_array_equal(mask, [[True, True, True], [False, True, False]])


def test_segment_ids_with_a_cache_are_an_error(random_params):
  cfg = TINY
  tokens = jnp.zeros((1, 4), jnp.int32)
  with pytest.raises(ValueError, match="segment_ids"):
    Decoder(cfg).apply(random_params(cfg), tokens, segment_ids=tokens,
                       cache=KVCache.zeros(cfg, 1, 8))


def test_last_only_returns_the_last_position(random_params, logits_of):
  cfg = TINY
  variables = random_params(cfg)
  tokens = np.random.default_rng(3).integers(0, cfg.vocab_size, (2, 8)).astype(np.int32)
  last = Decoder(cfg).apply(variables, jnp.asarray(tokens), last_only=True)
  assert last.shape == (2, 1, cfg.vocab_size)
  np.testing.assert_allclose(last[:, 0], logits_of(cfg, variables, tokens)[:, -1], atol=1e-5)
