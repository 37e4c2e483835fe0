"""Tests for lm/model/attention.py: RoPE, Llama 3 scaling, masks, GQA / MQA.

References are written out in numpy following the Hugging Face implementations
(`rotate_half`, `_compute_llama3_parameters`, `repeat_kv`, eager attention).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.model import presets
from lm.model.attention import (Attention, apply_rope, attention_mask, rope_angles,
                                rope_inverse_frequencies)

B, T, V = 4, 16, 512
TINY = presets.get("tiny")


def rope_at(cfg, x: np.ndarray, position: int) -> np.ndarray:
  """apply_rope to x [1, 1, N, H] at one position."""
  sin, cos = rope_angles(cfg, jnp.full((1, 1), position))
  return np.asarray(apply_rope(jnp.asarray(x), sin, cos))


# --- RoPE -------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [TINY, TINY.replace(rope_scaling="llama3"),
                                 presets.get("llama3.1-8b")],
                         ids=["tiny", "tiny_llama3", "llama3.1-8b"])
def test_rope_score_depends_only_on_relative_position(cfg):
  h = cfg.resolved_head_dim
  rng = np.random.default_rng(0)
  q, k = (rng.standard_normal((1, 1, 1, h)).astype(np.float32) for _ in range(2))
  for m, n in [(0, 0), (5, 2), (3, 11), (40, 17)]:
    score = np.sum(rope_at(cfg, q, m) * rope_at(cfg, k, n))
    for shift in (1, 7, 100, 1000):
      shifted = np.sum(rope_at(cfg, q, m + shift) * rope_at(cfg, k, n + shift))
      np.testing.assert_allclose(shifted, score, atol=2e-3 * h ** 0.5,
                                 err_msg=f"(m, n)=({m}, {n}), shift {shift}")
  # Control: the score does change with the distance m - n.
  assert abs(np.sum(rope_at(cfg, q, 5) * rope_at(cfg, k, 2))
             - np.sum(rope_at(cfg, q, 5) * rope_at(cfg, k, 4))) > 1e-3


def test_apply_rope_matches_hugging_face_rotate_half():
  h = TINY.resolved_head_dim
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 5, 3, h)).astype(np.float32)          # [B, T, N, H]
  positions = rng.integers(0, 300, size=(2, 5))
  sin, cos = rope_angles(TINY, jnp.asarray(positions))
  assert sin.shape == cos.shape == (2, 5, h // 2) and sin.dtype == jnp.float32

  inv_freq = 1.0 / 10_000.0 ** (np.arange(0, h, 2) / h)
  angles = positions[..., None] * inv_freq                           # [B, T, H/2]
  emb = np.concatenate([angles, angles], axis=-1)[:, :, None, :]     # [B, T, 1, H]
  rotate_half = np.concatenate([-x[..., h // 2:], x[..., :h // 2]], axis=-1)
  expected = x * np.cos(emb) + rotate_half * np.sin(emb)
  np.testing.assert_allclose(apply_rope(jnp.asarray(x), sin, cos), expected, atol=1e-4)


def test_apply_rope_is_a_rotation():
  h = TINY.resolved_head_dim
  x = np.random.default_rng(2).standard_normal((1, 1, 2, h)).astype(np.float32)
  np.testing.assert_allclose(rope_at(TINY, x, 0), x, atol=1e-7)  # position 0: identity
  rotated = rope_at(TINY, x, 123)
  np.testing.assert_allclose(np.linalg.norm(rotated, axis=-1), np.linalg.norm(x, axis=-1),
                             rtol=1e-5)
  assert not np.allclose(rotated, x, atol=1e-2)


def test_apply_rope_keeps_bfloat16():
  x = jnp.ones((1, 3, 2, TINY.resolved_head_dim), jnp.bfloat16)
  sin, cos = rope_angles(TINY, jnp.arange(3)[None])
  assert apply_rope(x, sin, cos).dtype == jnp.bfloat16


def test_default_inverse_frequencies():
  cfg = TINY.replace(rope_theta=500_000.0)
  h = cfg.resolved_head_dim
  expected = 1.0 / 500_000.0 ** (np.arange(0, h, 2) / h)
  np.testing.assert_allclose(rope_inverse_frequencies(cfg), expected, rtol=1e-6)


def hf_llama3_inverse_frequencies(head_dim, theta, factor, low_freq_factor, high_freq_factor,
                                  old_context_len):
  """transformers.modeling_rope_utils._compute_llama3_parameters, in numpy."""
  inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float64)
                              / head_dim))
  low_freq_wavelen = old_context_len / low_freq_factor
  high_freq_wavelen = old_context_len / high_freq_factor
  wavelen = 2 * math.pi / inv_freq
  inv_freq_llama = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
  smooth_factor = ((old_context_len / wavelen - low_freq_factor)
                   / (high_freq_factor - low_freq_factor))
  smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
  is_medium_freq = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
  return np.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama), inv_freq, wavelen


LLAMA3_CASES = {
    "llama3.1-8b": presets.get("llama3.1-8b"),
    # Unequal, non-default factors catch swapped or ignored fields.
    "custom": TINY.replace(head_dim=64, rope_theta=500_000.0, rope_scaling="llama3",
                           rope_scaling_factor=32.0, rope_low_freq_factor=2.0,
                           rope_high_freq_factor=8.0, rope_original_max_len=4096),
}


@pytest.mark.parametrize("name", list(LLAMA3_CASES))
def test_llama3_rope_scaling_matches_hugging_face(name):
  cfg = LLAMA3_CASES[name]
  ours = rope_inverse_frequencies(cfg)
  expected, unscaled, wavelen = hf_llama3_inverse_frequencies(
      cfg.resolved_head_dim, cfg.rope_theta, cfg.rope_scaling_factor, cfg.rope_low_freq_factor,
      cfg.rope_high_freq_factor, cfg.rope_original_max_len)
  assert ours.shape == (cfg.resolved_head_dim // 2,)
  np.testing.assert_allclose(ours, expected, rtol=1e-6)

  high = wavelen < cfg.rope_original_max_len / cfg.rope_high_freq_factor
  low = wavelen > cfg.rope_original_max_len / cfg.rope_low_freq_factor
  medium = ~high & ~low
  assert high.any() and low.any() and medium.any(), "the case should cover all three bands"
  np.testing.assert_allclose(ours[high], unscaled[high], rtol=1e-6)                  # unchanged
  np.testing.assert_allclose(ours[low], unscaled[low] / cfg.rope_scaling_factor, rtol=1e-6)
  # In between: strictly between the two, moving smoothly from divided to unchanged.
  assert np.all(ours[medium] < unscaled[medium])
  assert np.all(ours[medium] > unscaled[medium] / cfg.rope_scaling_factor)
  ratio = ours / unscaled
  assert np.all(np.diff(ratio) <= 1e-6), "the scaling should grow with the wavelength"


def test_llama3_scaling_is_off_by_default():
  cfg = presets.get("llama3-8b")
  np.testing.assert_allclose(rope_inverse_frequencies(cfg),
                             rope_inverse_frequencies(cfg.replace(rope_scaling="none")))
  assert not np.allclose(rope_inverse_frequencies(cfg.replace(rope_scaling="llama3")),
                         rope_inverse_frequencies(cfg))


# --- Masks ------------------------------------------------------------------------------------

@pytest.mark.parametrize("window", [0, 1, 3])
def test_attention_mask_is_causal_segment_and_window(window):
  segment_ids = np.array([[1, 1, 1, 2, 2, 2, 2, 0], [5, 5, 5, 5, 5, 5, 5, 5]])
  mask = np.asarray(attention_mask(jnp.asarray(segment_ids), window))
  assert mask.shape == (2, 1, 8, 8) and mask.dtype == bool
  for b in range(2):
    for q in range(8):
      for k in range(8):
        expected = (k <= q and segment_ids[b, q] == segment_ids[b, k]
                    and (window == 0 or q - k < window))
        assert mask[b, 0, q, k] == expected, (b, q, k)


# --- The attention layer ----------------------------------------------------------------------

def reference_attention(params, x, positions, mask, cfg):
  """Eager attention as in Hugging Face Llama: repeat_kv, rotate_half RoPE, 1/sqrt(H)."""
  n, k, h = cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim
  q = np.einsum("btd,dnh->btnh", x, params["query"])
  key = np.einsum("btd,dnh->btnh", x, params["key"])
  value = np.einsum("btd,dnh->btnh", x, params["value"])
  inv_freq = 1.0 / cfg.rope_theta ** (np.arange(0, h, 2) / h)
  emb = positions[..., None] * inv_freq
  emb = np.concatenate([emb, emb], -1)[:, :, None, :]

  def rope(v):
    return v * np.cos(emb) + np.concatenate([-v[..., h // 2:], v[..., :h // 2]], -1) * np.sin(emb)

  q, key = rope(q), rope(key)
  key, value = np.repeat(key, n // k, axis=2), np.repeat(value, n // k, axis=2)
  scores = np.einsum("btnh,bsnh->bnts", q, key) / np.sqrt(h)
  scores = np.where(mask, scores, -np.inf)                       # mask [B, 1, T, S]
  weights = np.exp(scores - scores.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  out = np.einsum("bnts,bsnh->btnh", weights, value)
  return np.einsum("btnh,nhd->btd", out, params["out"])


@pytest.mark.parametrize("num_kv_heads,window", [(4, 0), (2, 3), (1, 0), (1, 2)],
                         ids=["mha", "gqa_window", "mqa", "mqa_window"])
def test_attention_layer_matches_reference(num_kv_heads, window):
  cfg = TINY.replace(num_kv_heads=num_kv_heads, sliding_window=window)
  rng = np.random.default_rng(3)
  x = rng.standard_normal((2, 8, cfg.d_model)).astype(np.float32)
  positions = np.stack([np.arange(8), np.concatenate([np.arange(5), np.arange(3)])])
  segment_ids = np.array([[1] * 8, [1] * 5 + [2] * 3])
  sin, cos = rope_angles(cfg, jnp.asarray(positions))
  module = Attention(cfg)
  shapes = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), jnp.asarray(x), sin, cos, None))
  params = jax.tree.map(lambda s: 0.2 * rng.standard_normal(s.shape).astype(np.float32),
                        shapes["params"])
  expected_mask = np.asarray(attention_mask(jnp.asarray(segment_ids), window))
  apply = jax.jit(module.apply)
  got = apply({"params": params}, jnp.asarray(x), sin, cos, jnp.asarray(expected_mask))
  expected = reference_attention(params, x.astype(np.float64), positions, expected_mask, cfg)
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
  # mask=None: plain causal (+ window) attention, as for one document per row.
  got_causal = apply({"params": params}, jnp.asarray(x), sin, cos, None)
  causal = np.asarray(attention_mask(jnp.ones((2, 8), jnp.int32), window))
  expected_causal = reference_attention(params, x.astype(np.float64), positions, causal, cfg)
  np.testing.assert_allclose(got_causal, expected_causal, atol=1e-4, rtol=1e-4)


# --- GQA / MQA are MHA with shared key/value heads ----------------------------------------------

def repeat_kv_params(params: dict, groups: int, kv_axis: int, tile: bool = False) -> dict:
  """Copies `params`, repeating key/value weights (and biases) along their kv_heads axis."""
  def grow(x, axis):
    if tile:  # [k0, k1] -> [k0, k1, k0, k1]: the wrong layout, for control tests
      return jnp.tile(x, [groups if a == axis else 1 for a in range(x.ndim)])
    return jnp.repeat(x, groups, axis=axis)  # [k0, k1] -> [k0, k0, k1, k1]

  def visit(path, x):
    names = [getattr(p, "key", None) for p in path]
    if "attention" in names and names[-1] in ("key", "value"):
      return grow(x, kv_axis)
    if "attention" in names and names[-1] in ("key_bias", "value_bias"):
      return grow(x, kv_axis - 1)
    return x

  return jax.tree_util.tree_map_with_path(visit, params)


@pytest.mark.parametrize("num_kv_heads,scan_layers,attention_bias",
                         [(2, True, True), (1, False, False)], ids=["gqa_bias", "mqa_no_scan"])
def test_grouped_query_attention_equals_mha_with_repeated_kv(num_kv_heads, scan_layers,
                                                             attention_bias, param_shapes,
                                                             random_params, logits_of):
  grouped = TINY.replace(num_heads=4, num_kv_heads=num_kv_heads, scan_layers=scan_layers,
                         attention_bias=attention_bias)
  mha = grouped.replace(num_kv_heads=4)
  params = random_params(grouped)  # biases are noise too, so repeating them is tested
  kv_axis = 2 if scan_layers else 1  # key: [L, D, K, H] under nn.scan, else [D, K, H]
  mha_params = repeat_kv_params(params, 4 // num_kv_heads, kv_axis)
  expected_shapes = jax.tree.map(lambda s: s.shape, nn.unbox(param_shapes(mha)))
  assert jax.tree.map(lambda x: x.shape, mha_params) == expected_shapes

  tokens = np.random.default_rng(4).integers(0, V, size=(B, T)).astype(np.int32)
  logits = logits_of(grouped, params, tokens)
  np.testing.assert_allclose(logits_of(mha, mha_params, tokens), logits, atol=1e-5, rtol=0)
  if num_kv_heads > 1:
    # Control: tiling instead of repeating pairs query heads with the wrong kv heads.
    wrong = logits_of(mha, repeat_kv_params(params, 4 // num_kv_heads, kv_axis, tile=True), tokens)
    assert np.abs(wrong - logits).max() > 1e-3
