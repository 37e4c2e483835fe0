"""Tests for lm/model/output.py: the chunked output layer + cross-entropy equals the whole one
(values and gradients, float32), in the Decoder with tied and untied embeddings and z-loss,
and never holds the [B, T, V] logits (XLA's memory analysis of the compiled gradient)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.model import Decoder, presets
from lm.model.output import chunked_cross_entropy, cross_entropy, output_logits
from lm.stages import pretrain


def _rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("t,chunk", [(64, 16), (60, 16)], ids=["divides", "padded"])
def test_chunked_cross_entropy_equals_whole(t, chunk):
  rng = np.random.default_rng(0)
  b, d, v = 3, 32, 200
  hidden = jnp.asarray(rng.standard_normal((b, t, d)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((d, v)) * 0.3, jnp.float32)
  targets = jnp.asarray(rng.integers(0, v, (b, t)), jnp.int32)
  weights = jnp.asarray(rng.random((b, t)), jnp.float32)

  def loss(ce):
    def f(hidden, w):
      nll, log_z = ce(hidden, w)
      return jnp.sum(nll * weights) + 1e-2 * jnp.sum(jnp.square(log_z) * weights)
    return jax.value_and_grad(f, argnums=(0, 1))

  whole = lambda h, w: cross_entropy(output_logits(h, w), targets)
  chunked = lambda h, w: chunked_cross_entropy(h, w, targets, chunk)
  for got, want in zip(whole(hidden, w), chunked(hidden, w)):
    assert got.shape == (b, t)
    assert _rel(got, want) <= 1e-6
  (got_loss, got_grads), (want_loss, want_grads) = loss(chunked)(hidden, w), loss(whole)(hidden, w)
  assert _rel(got_loss, want_loss) <= 1e-6
  for g, want in zip(got_grads, want_grads):
    assert _rel(g, want) <= 1e-6


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_decoder_loss_chunk_keeps_loss_and_gradients(tied, random_params):
  """pretrain's loss (z-loss on) with model.loss_chunk=32 equals loss_chunk=0 to 1e-6."""
  cfg = presets.get("tiny").replace(tie_embeddings=tied)
  params = random_params(cfg)["params"]
  rng = np.random.default_rng(1)
  b, t = 2, 96
  batch = {"inputs": jnp.asarray(rng.integers(0, cfg.vocab_size, (b, t)), jnp.int32),
           "targets": jnp.asarray(rng.integers(0, cfg.vocab_size, (b, t)), jnp.int32),
           "loss_mask": jnp.asarray(rng.random((b, t)) < 0.8, jnp.float32),
           "segment_ids": jnp.asarray(np.repeat([[1, 2]], b, 0).repeat(t // 2, 1), jnp.int32)}

  def grads(cfg):
    model = Decoder(cfg)
    apply = lambda p, tokens, **kw: model.apply({"params": p}, tokens, **kw)
    return jax.jit(jax.grad(lambda p: pretrain.loss_fn(apply, p, batch, z_loss=1e-3),
                            has_aux=True))(params)

  got_grads, got = grads(cfg.replace(loss_chunk=32))
  want_grads, want = grads(cfg)
  for name in ("loss", "z_loss", "weight"):
    assert _rel(got[name], want[name]) <= 1e-6, name
  flat_got, flat_want = jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)
  assert len(flat_got) == len(flat_want)
  for g, w in zip(flat_got, flat_want):
    assert _rel(g, w) <= 1e-6


def test_chunked_loss_never_holds_the_logits():
  """XLA's memory analysis of the compiled gradient: the chunked loss alone needs less scratch
  than one [B, T, V] float32 logits array (the whole one needs two: logits and gradient),
  and in the Decoder chunking saves at least one such array."""
  b, t, v = 2, 512, 8192
  logits_bytes = b * t * v * 4  # 32 MiB
  tokens = jnp.zeros((b, t), jnp.int32)

  def temp_bytes(loss, *args):
    compiled = jax.jit(jax.grad(loss)).lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  hidden, w = jax.ShapeDtypeStruct((b, t, 64), jnp.float32), jax.ShapeDtypeStruct((64, v),
                                                                                   jnp.float32)
  whole = temp_bytes(lambda h, w: jnp.sum(cross_entropy(output_logits(h, w), tokens)[0]),
                     hidden, w)
  chunked = temp_bytes(lambda h, w: jnp.sum(chunked_cross_entropy(h, w, tokens, 64)[0]),
                       hidden, w)
  assert whole >= 2 * logits_bytes
  assert chunked < logits_bytes / 2

  cfg = presets.get("tiny").replace(vocab_size=v, num_layers=1)
  params = jax.eval_shape(lambda: Decoder(cfg).init(jax.random.key(0), tokens[:, :8]))

  def decoder_temp(cfg):
    return temp_bytes(lambda p: jnp.sum(Decoder(cfg).apply(p, tokens, targets=tokens)[0]), params)

  assert decoder_temp(cfg) - decoder_temp(cfg.replace(loss_chunk=64)) >= logits_bytes


def test_loss_chunk_must_not_be_negative():
  with pytest.raises(ValueError, match=r"model.loss_chunk=-1 must be >= 0"):
    presets.get("tiny").replace(loss_chunk=-1)


def test_bfloat16_logits_are_accumulated_and_kept_in_float32():
  """bf16 inputs, float32 logits that equal the exact products (no bf16 rounding of the
  logits, which would be off by ~0.4%)."""
  rng = np.random.default_rng(2)
  hidden = jnp.asarray(rng.standard_normal((2, 8, 64)), jnp.bfloat16)
  w = jnp.asarray(rng.standard_normal((64, 100)), jnp.bfloat16)
  logits = output_logits(hidden, w)
  assert logits.dtype == jnp.float32
  exact = np.asarray(hidden, np.float64) @ np.asarray(w, np.float64)
  np.testing.assert_allclose(logits, exact, rtol=1e-5, atol=1e-5)
