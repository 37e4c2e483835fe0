"""Tests for lm/model/splash.py and the `model.attention` switch: the splash Pallas kernel, run
in interpret mode on CPU, against the XLA path of `jax.nn.dot_product_attention` (forward and
gradients; causal, packed segments, sliding window, GQA), inside a mesh through shard_map,
and in the whole Decoder.
"""

import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.model import Decoder, presets
from lm.model.attention import attention_kernel, attention_mask
from lm.model.splash import splash_attention

B, T, N, H = 2, 256, 4, 64
ROOT = pathlib.Path(__file__).resolve().parents[2]


def _inputs(num_kv_heads: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((B, T, N, H)).astype(np.float32)
  k = rng.standard_normal((B, T, num_kv_heads, H)).astype(np.float32)
  v = rng.standard_normal((B, T, num_kv_heads, H)).astype(np.float32)
  # Row 0: three packed documents; row 1: one.
  segments = np.stack([np.repeat([0, 1, 2], [100, 60, 96]), np.zeros(T, int)]).astype(np.int32)
  return jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(segments)


def _xla(q, k, v, segments, window):
  mask = attention_mask(segments, window)  # [B, 1, T, T]
  return jax.nn.dot_product_attention(q, k, v, mask=mask)


@pytest.mark.parametrize("num_kv_heads,window", [(4, 0), (2, 0), (1, 48)],
                         ids=["mha", "gqa", "mqa_window"])
def test_splash_matches_xla_forward_and_gradients(num_kv_heads, window):
  q, k, v, segments = _inputs(num_kv_heads)
  cotangent = jnp.asarray(np.random.default_rng(1).standard_normal((B, T, N, H)), jnp.float32)

  def loss(attend):
    return lambda q, k, v: jnp.sum(attend(q, k, v) * cotangent)

  splash = lambda q, k, v: splash_attention(q, k, v, segments, window)
  xla = lambda q, k, v: _xla(q, k, v, segments, window)
  np.testing.assert_allclose(splash(q, k, v), xla(q, k, v), atol=2e-5, rtol=1e-5)
  got = jax.grad(loss(splash), argnums=(0, 1, 2))(q, k, v)
  want = jax.grad(loss(xla), argnums=(0, 1, 2))(q, k, v)
  for name, g, w in zip("qkv", got, want):
    np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-4, err_msg=f"d{name}")


def test_splash_without_segments_is_plain_causal():
  q, k, v, _ = _inputs(2, seed=3)
  got = splash_attention(q, k, v, None, 0)
  want = jax.nn.dot_product_attention(q, k, v, is_causal=True)
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


_SHARDED_CHILD = """
import flax.linen as nn, jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from tests.model.test_splash import _inputs, _xla
from lm.model.splash import splash_attention
from lm.parallel import rules as rules_lib
assert jax.device_count() == 4
q, k, v, segments = _inputs(2, seed=4)
mesh = jax.make_mesh((2, 1, 2), ("data", "fsdp", "tensor"),
                     axis_types=(jax.sharding.AxisType.Auto,) * 3)
heads = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))
with jax.set_mesh(mesh), nn.logical_axis_rules(rules_lib.DEFAULT_RULES):
  f = jax.jit(lambda q, k, v: splash_attention(q, k, v, segments, 0),
              in_shardings=(heads, heads, heads), out_shardings=heads)
  text = f.lower(q, k, v).as_text()
  assert "manual" in text, "no shard_map in the lowered step"
  got = f(q, k, v)
  assert {s.data.shape for s in got.addressable_shards} == {(1, 256, 2, 64)}
np.testing.assert_allclose(got, _xla(q, k, v, segments, 0), atol=2e-5, rtol=1e-5)
print("ok")
"""


def test_splash_sharded_over_batch_and_heads():
  """4 CPU devices, batch over data and heads over tensor (the default rules): each device
  runs the kernel on its rows and heads (shard_map) and the result equals the XLA path."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  result = subprocess.run([sys.executable, "-c", _SHARDED_CHILD], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=300, check=False)
  assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def test_splash_rejects_lengths_off_its_block():
  q, k, v, _ = _inputs(2)
  with pytest.raises(ValueError, match="model.attention='splash'.*multiple of 128"):
    splash_attention(q[:, :100], k[:, :100], v[:, :100], None, 0)


def test_decoder_with_splash_equals_xla(random_params):
  """The whole model: packed rows, GQA, sliding window, scanned layers; logits and gradients."""
  cfg = presets.get("tiny").replace(sliding_window=64, max_seq_len=T)
  params = random_params(cfg)
  rng = np.random.default_rng(5)
  tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (B, 128)), jnp.int32)
  segments = jnp.asarray(np.stack([np.repeat([1, 2], [70, 58]), np.ones(128, int)]), jnp.int32)

  def loss(cfg):
    def f(params):
      logits = Decoder(cfg).apply(params, tokens, segment_ids=segments)
      return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 0]), logits
    return jax.value_and_grad(f, has_aux=True)

  (_, got), got_grads = loss(cfg.replace(attention="splash"))(params)
  (_, want), want_grads = loss(cfg.replace(attention="xla"))(params)
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)
  for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(g, w, atol=2e-5, rtol=1e-4)


def test_auto_picks_the_kernel_of_the_backend():
  cfg = presets.get("tiny")
  assert attention_kernel(cfg, 256, backend="cpu") == "xla"
  assert attention_kernel(cfg, 256, backend="tpu") == "splash"
  assert attention_kernel(cfg, 100, backend="tpu") == "xla"  # off the kernel's block
  assert attention_kernel(cfg, 256, backend="gpu") == "xla"  # cuDNN needs 16-bit compute
  assert attention_kernel(cfg.replace(dtype="bfloat16"), 256, backend="gpu") == "cudnn"
  assert attention_kernel(cfg.replace(attention="splash"), 256, backend="cpu") == "splash"


def test_unknown_kernel_names_the_field():
  with pytest.raises(ValueError, match=r"model.attention='flash' is not one of"):
    presets.get("tiny").replace(attention="flash")
