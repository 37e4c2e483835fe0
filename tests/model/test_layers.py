"""Tests for lm/model/layers.py: norms, embeddings, MLPs, parameter dtypes and axis names."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.model import presets
from lm.model.layers import Embed, Mlp, Norm

TINY = presets.get("tiny")
D = TINY.d_model


def features(seed: int = 0, shape=(2, 5, D)) -> np.ndarray:
  """Activations with a nonzero mean and a scale far from 1, so normalising is visible."""
  rng = np.random.default_rng(seed)
  return (3.0 * rng.standard_normal(shape) + 1.5).astype(np.float32)


def init_and_apply(module, *args):
  variables = module.init(jax.random.key(0), *args)
  return variables, np.asarray(module.apply(variables, *args))


# --- Norms -----------------------------------------------------------------------------------

def test_rmsnorm_output_has_unit_rms():
  x = features()
  variables, y = init_and_apply(Norm(TINY), jnp.asarray(x))
  scale = nn.unbox(variables)["params"]["scale"]
  np.testing.assert_array_equal(scale, np.ones(D))
  assert set(nn.unbox(variables)["params"]) == {"scale"}
  np.testing.assert_allclose(np.sqrt(np.mean(y ** 2, axis=-1)), 1.0, rtol=1e-4)
  # RMSNorm does not centre: direction is kept, y = x / rms(x).
  expected = x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + TINY.norm_eps)
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_rmsnorm_scale_multiplies_each_feature():
  x = features(1)
  scale = np.linspace(0.5, 2.0, D).astype(np.float32)
  y = Norm(TINY).apply({"params": {"scale": jnp.asarray(scale)}}, jnp.asarray(x))
  unit = x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + TINY.norm_eps)
  np.testing.assert_allclose(y, unit * scale, rtol=1e-5, atol=1e-6)


def test_norm_plus_one_initialises_zeros_and_scales_by_one_plus_scale():
  gemma = TINY.replace(norm_plus_one=True)
  x = features(2)
  variables, y = init_and_apply(Norm(gemma), jnp.asarray(x))
  np.testing.assert_array_equal(nn.unbox(variables)["params"]["scale"], np.zeros(D))
  np.testing.assert_allclose(np.sqrt(np.mean(y ** 2, axis=-1)), 1.0, rtol=1e-4)  # 1 + 0
  scale = np.linspace(-0.5, 0.7, D).astype(np.float32)
  y_gemma = Norm(gemma).apply({"params": {"scale": jnp.asarray(scale)}}, jnp.asarray(x))
  y_plain = Norm(TINY).apply({"params": {"scale": jnp.asarray(1.0 + scale)}}, jnp.asarray(x))
  np.testing.assert_allclose(y_gemma, y_plain, rtol=1e-6, atol=1e-6)


def test_layernorm_centres_and_normalises():
  cfg = TINY.replace(norm="layernorm")
  x = features(3)
  _, y = init_and_apply(Norm(cfg), jnp.asarray(x))
  np.testing.assert_allclose(np.mean(y, axis=-1), 0.0, atol=1e-5)
  np.testing.assert_allclose(np.var(y, axis=-1), 1.0, rtol=1e-4)
  expected = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + cfg.norm_eps)
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_layernorm_bias_is_added_after_scaling():
  cfg = TINY.replace(norm="layernorm", use_bias=True)
  x = features(4)
  variables, y0 = init_and_apply(Norm(cfg), jnp.asarray(x))
  np.testing.assert_array_equal(nn.unbox(variables)["params"]["bias"], np.zeros(D))
  scale = np.linspace(0.5, 2.0, D).astype(np.float32)
  bias = np.linspace(-1.0, 1.0, D).astype(np.float32)
  y = Norm(cfg).apply({"params": {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)}},
                      jnp.asarray(x))
  np.testing.assert_allclose(y, y0 * scale + bias, rtol=1e-5, atol=1e-5)


def test_norm_computes_in_float32_and_returns_input_dtype():
  cfg = TINY.replace(dtype="bfloat16")
  x = jnp.asarray(features(5)).astype(jnp.bfloat16)
  variables, y = init_and_apply(Norm(cfg), x)
  assert y.dtype == jnp.bfloat16
  assert nn.unbox(variables)["params"]["scale"].dtype == jnp.float32
  x32 = np.asarray(x.astype(jnp.float32))
  expected = x32 / np.sqrt(np.mean(x32 ** 2, axis=-1, keepdims=True) + cfg.norm_eps)
  np.testing.assert_array_equal(y, jnp.asarray(expected).astype(jnp.bfloat16))


# --- Embeddings -------------------------------------------------------------------------------

@pytest.mark.parametrize("scale_embeddings", [False, True])
def test_embedding_lookup_and_sqrt_d_scaling(scale_embeddings):
  cfg = TINY.replace(scale_embeddings=scale_embeddings, init_std=0.02)
  tokens = jnp.asarray([[0, 5, 511, 5]])
  variables, x = init_and_apply(Embed(cfg), tokens)
  table = np.asarray(nn.unbox(variables)["params"]["embedding"])
  assert table.shape == (cfg.vocab_size, D) and table.dtype == np.float32
  np.testing.assert_allclose(np.std(table), 0.02, rtol=0.05)
  factor = np.sqrt(D) if scale_embeddings else 1.0
  np.testing.assert_allclose(x, table[np.asarray(tokens)] * factor, rtol=1e-6)


def test_embedding_attend_is_matmul_with_table_transpose():
  tokens = jnp.asarray([[1, 2]])
  embed = Embed(TINY)
  variables = embed.init(jax.random.key(0), tokens)
  table = np.asarray(nn.unbox(variables)["params"]["embedding"])
  h = features(6, (2, 3, D))
  logits = embed.apply(variables, jnp.asarray(h), method=Embed.attend)
  assert logits.shape == (2, 3, TINY.vocab_size)
  np.testing.assert_allclose(logits, h @ table.T, rtol=1e-5, atol=1e-5)


def test_embedding_casts_to_compute_dtype():
  cfg = TINY.replace(dtype="bfloat16", scale_embeddings=True)
  tokens = jnp.asarray([[3, 4]])
  variables, x = init_and_apply(Embed(cfg), tokens)
  assert x.dtype == jnp.bfloat16
  table = np.asarray(nn.unbox(variables)["params"]["embedding"])
  np.testing.assert_allclose(x.astype(np.float32), table[[[3, 4]]] * np.sqrt(D), rtol=1e-2)


# --- MLPs -------------------------------------------------------------------------------------

def gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def silu(x):
  return x / (1 + np.exp(-x))


@pytest.mark.parametrize("mlp,use_bias", [("swiglu", False), ("geglu", False), ("gelu", True),
                                          ("swiglu", True)])
def test_mlp_matches_reference(mlp, use_bias):
  cfg = TINY.replace(mlp=mlp, use_bias=use_bias)
  x = features(7, (2, 3, D)) / 3.0
  module = Mlp(cfg)
  shapes = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), jnp.asarray(x)))["params"]
  expected_names = {"wi_up", "wo"} | ({"wi_gate"} if mlp != "gelu" else set())
  if use_bias:
    expected_names |= {name + "_bias" for name in expected_names}
  assert set(shapes) == expected_names
  rng = np.random.default_rng(8)
  p = {k: (0.1 * rng.standard_normal(s.shape)).astype(np.float32) for k, s in shapes.items()}
  y = module.apply({"params": p}, jnp.asarray(x))

  def dense(name, inputs):
    out = inputs @ p[name]
    return out + p[name + "_bias"] if use_bias else out

  up = dense("wi_up", x)
  if mlp == "gelu":
    hidden = gelu_tanh(up)
  else:
    activation = silu if mlp == "swiglu" else gelu_tanh
    hidden = activation(dense("wi_gate", x)) * up
  np.testing.assert_allclose(y, dense("wo", hidden), rtol=1e-4, atol=1e-5)


def test_mlp_output_projection_init_is_scaled_by_depth():
  cfg = TINY.replace(num_layers=8, init_std=0.05, d_ff=1024)
  variables = Mlp(cfg).init(jax.random.key(0, impl="rbg"), jnp.zeros((1, 2, D)))
  p = nn.unbox(variables)["params"]
  np.testing.assert_allclose(np.std(p["wi_up"]), 0.05, rtol=0.05)
  np.testing.assert_allclose(np.std(p["wo"]), 0.05 / 4, rtol=0.05)  # / sqrt(2 * 8)


# --- Parameter metadata -------------------------------------------------------------------------

@pytest.mark.parametrize("module,args", [
    (Norm(TINY.replace(use_bias=True)), (jnp.zeros((1, 2, D)),)),
    (Embed(TINY), (jnp.zeros((1, 2), jnp.int32),)),
    (Mlp(TINY.replace(use_bias=True)), (jnp.zeros((1, 2, D)),)),
], ids=["norm", "embed", "mlp"])
def test_layer_params_are_float32_with_logical_axes(module, args):
  variables = jax.eval_shape(module.init, jax.random.key(0), *args)
  boxes = jax.tree.leaves(variables, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert boxes
  for box in boxes:
    assert isinstance(box, nn.LogicallyPartitioned)
    assert len(box.names) == box.value.ndim and all(box.names)
    assert box.value.dtype == jnp.float32
