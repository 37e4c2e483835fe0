"""Tests for lm/model/transformer.py: causality, windows, packing, positions, numerics, remat.

Configs are the 'tiny' preset with small changes, float32 unless said otherwise. Most calls
use tokens of shape [B, T] = [4, 16] so that tests on one config share one compilation (see
the `logits_of` fixture in conftest.py).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.model import Decoder, presets

B, T, V = 4, 16, 512

TINY = presets.get("tiny")
BASE = TINY
NO_SCAN = TINY.replace(scan_layers=False)
WINDOW = TINY.replace(sliding_window=4)
GPT2_LIKE = TINY.replace(norm="layernorm", mlp="gelu", positions="learned", use_bias=True,
                         tie_embeddings=True)
GEMMA_LIKE = TINY.replace(norm_plus_one=True, mlp="geglu", tie_embeddings=True,
                          scale_embeddings=True, num_kv_heads=1)


def random_tokens(seed: int, shape) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, V, size=shape).astype(np.int32)


def perturb(token: int) -> int:
  return (int(token) + 1) % V


def unrolled(scan_params: dict, num_layers: int) -> dict:
  """Parameters of the scan_layers=False model equal to a scan_layers=True model's."""
  p = scan_params["params"]
  out = {k: v for k, v in p.items() if k != "layers"}
  for i in range(num_layers):
    out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], p["layers"])
  return {"params": out}


def params_for(cfg, random_params):
  """NO_SCAN-style configs reuse the scanned model's parameters, sliced per layer."""
  if cfg.scan_layers:
    return random_params(cfg)
  return unrolled(random_params(cfg.replace(scan_layers=True)), cfg.num_layers)


# --- Causality --------------------------------------------------------------------------------

CAUSAL_CONFIGS = {"scan": BASE, "no_scan": NO_SCAN, "window": WINDOW,
                  "learned_positions": GPT2_LIKE}


@pytest.mark.parametrize("with_segments", [False, True], ids=["is_causal", "segment_mask"])
@pytest.mark.parametrize("name", list(CAUSAL_CONFIGS))
def test_logits_up_to_t_ignore_later_tokens(name, with_segments, random_params, logits_of):
  cfg = CAUSAL_CONFIGS[name]
  params = params_for(cfg, random_params)
  base = random_tokens(0, (T,))
  segment_ids = np.ones((B, T), np.int32) if with_segments else None
  for chunk in ([0, 3, 7], [10, 12, T - 2]):
    rows = [base]
    for t in chunk:
      row = base.copy()
      row[t + 1:] = random_tokens(100 + t, (T - t - 1,))
      row[t + 1] = perturb(base[t + 1])  # the first later token surely differs
      rows.append(row)
    logits = logits_of(cfg, params, np.stack(rows), segment_ids=segment_ids)  # [B, T, V]
    for i, t in enumerate(chunk, start=1):
      np.testing.assert_allclose(logits[i, :t + 1], logits[0, :t + 1], atol=1e-6, rtol=0,
                                 err_msg=f"logits at positions <= {t} saw later tokens")
      # Control: the change shows from position t + 1 on, so the check above has teeth.
      assert np.abs(logits[i, t + 1] - logits[0, t + 1]).max() > 1e-3


@pytest.mark.parametrize("cfg", [BASE, NO_SCAN, WINDOW, GPT2_LIKE],
                         ids=["causal", "no_scan", "window", "learned_positions"])
def test_one_segment_mask_equals_plain_causal_attention(cfg, random_params, logits_of):
  """segment_ids all equal builds an explicit mask; it must equal is_causal (+ local window)."""
  params = params_for(cfg, random_params)
  tokens = random_tokens(1, (B, T))
  plain = logits_of(cfg, params, tokens)
  for segment in (1, 0):
    masked = logits_of(cfg, params, tokens, segment_ids=np.full((B, T), segment, np.int32))
    np.testing.assert_allclose(masked, plain, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [1, 3])
def test_sliding_window_covers_exactly_window_tokens(window, random_params, logits_of):
  """One layer: query q attends to keys q - window + 1 .. q (Hugging Face Mistral's rule).

  This checks the is_causal + local_window_size path; the explicit mask built from segment_ids
  is checked against it above and against a loop in test_attention.py.
  """
  cfg = TINY.replace(num_layers=1, sliding_window=window)
  params = random_params(cfg.replace(sliding_window=0))
  q = 10
  base = random_tokens(2, (T,))
  rows = [base.copy() for _ in range(B)]
  rows[1][q - window + 1] = perturb(base[q - window + 1])  # oldest token inside the window
  rows[2][q - window] = perturb(base[q - window])          # newest token outside it
  rows[3][:q - window + 1] = random_tokens(3, (q - window + 1,))  # everything outside it
  logits = logits_of(cfg, params, np.stack(rows))
  assert np.abs(logits[1, q] - logits[0, q]).max() > 1e-4, "a token inside the window was ignored"
  for i in (2, 3):
    np.testing.assert_allclose(logits[i, q], logits[0, q], atol=1e-6, rtol=0,
                               err_msg="a token outside the window was attended to")


def test_window_wider_than_sequence_equals_no_window(random_params, logits_of):
  params = random_params(BASE)
  tokens = random_tokens(4, (B, T))
  np.testing.assert_allclose(logits_of(TINY.replace(sliding_window=T), params, tokens),
                             logits_of(BASE, params, tokens), atol=1e-5, rtol=1e-5)


# --- Packed documents ----------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [BASE, NO_SCAN, WINDOW, GPT2_LIKE],
                         ids=["scan", "no_scan", "window", "learned_positions"])
def test_packed_documents_match_documents_run_alone(cfg, random_params, logits_of):
  params = params_for(cfg, random_params)
  a, b = 7, T - 7
  doc_a, doc_b, other_a = random_tokens(5, (a,)), random_tokens(6, (b,)), random_tokens(7, (a,))
  packed = np.stack([np.concatenate([doc_a, doc_b]), np.concatenate([other_a, doc_b])] * 2)
  segment_ids = np.array([[1] * a + [2] * b] * B)
  positions = np.array([list(range(a)) + list(range(b))] * B)  # B's restart at 0
  logits = logits_of(cfg, params, packed, positions=positions, segment_ids=segment_ids)

  # Alone: each document from position 0, followed by filler that causality keeps out.
  filler = random_tokens(8, (T,))
  alone = np.stack([np.concatenate([doc_a, filler[a:]]), np.concatenate([doc_b, filler[b:]]),
                    filler, filler])
  alone_logits = logits_of(cfg, params, alone)
  np.testing.assert_allclose(logits[0, :a], alone_logits[0, :a], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(logits[0, a:], alone_logits[1, :b], atol=1e-5, rtol=1e-5)
  # Document A's tokens do not reach document B's logits.
  np.testing.assert_allclose(logits[1, a:], logits[0, a:], atol=1e-6, rtol=0)
  assert np.abs(logits[1, :a] - logits[0, :a]).max() > 1e-3  # control: A's own logits moved


def test_packing_without_segment_ids_leaks_between_documents(random_params, logits_of):
  """Control for the test above: without segment_ids document B does see document A."""
  params = random_params(BASE)
  a, b = 7, T - 7
  tokens = np.stack([np.concatenate([random_tokens(5, (a,)), random_tokens(6, (b,))]),
                     np.concatenate([random_tokens(7, (a,)), random_tokens(6, (b,))])] * 2)
  positions = np.array([list(range(a)) + list(range(b))] * B)
  logits = logits_of(BASE, params, tokens, positions=positions)
  assert np.abs(logits[1, a:] - logits[0, a:]).max() > 1e-3


# --- Positions --------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [BASE, WINDOW], ids=["rope", "rope_window"])
def test_rope_logits_invariant_to_position_offset(cfg, random_params, logits_of):
  params = random_params(cfg)
  tokens = np.stack([random_tokens(9, (T,))] * B)
  start = np.arange(T)
  positions = np.stack([start, start + 1, start + 13, start + 250])
  logits = logits_of(cfg, params, tokens, positions=positions)
  for i in range(1, B):
    np.testing.assert_allclose(logits[i], logits[0], atol=2e-4, rtol=1e-4,
                               err_msg=f"offset {positions[i, 0]}")
  # Control: positions do matter, only their origin does not.
  stretched = logits_of(cfg, params, tokens, positions=np.stack([start * 3] * B))
  assert np.abs(stretched[0] - logits[0]).max() > 1e-3


def test_learned_positions_are_absolute(random_params, logits_of):
  params = random_params(GPT2_LIKE)
  tokens = np.stack([random_tokens(10, (T,))] * B)
  positions = np.arange(T) + np.array([[0], [1], [5], [100]])
  logits = logits_of(GPT2_LIKE, params, tokens, positions=positions)
  for i in range(1, B):
    assert np.abs(logits[i] - logits[0]).max() > 1e-3


def test_default_positions_are_arange(random_params, logits_of):
  params = random_params(BASE)
  tokens = random_tokens(11, (B, T))
  default = jax.jit(Decoder(BASE).apply)(params, jnp.asarray(tokens))
  np.testing.assert_array_equal(np.asarray(default), logits_of(BASE, params, tokens))


# --- Scan, dtype, remat ------------------------------------------------------------------------

def test_scan_and_unrolled_layers_compute_the_same_function(random_params, logits_of,
                                                            param_shapes):
  scan_params = random_params(BASE)
  loop_params = unrolled(scan_params, TINY.num_layers)
  expected = jax.tree.map(lambda s: s.shape, nn.unbox(param_shapes(NO_SCAN)))
  assert jax.tree.map(lambda x: x.shape, loop_params) == expected
  tokens = random_tokens(12, (B, T))
  np.testing.assert_allclose(logits_of(NO_SCAN, loop_params, tokens),
                             logits_of(BASE, scan_params, tokens), atol=1e-5, rtol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_logits(random_params, logits_of, param_shapes):
  cfg = TINY.replace(dtype="bfloat16")
  shapes = param_shapes(cfg)
  assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(nn.unbox(shapes)))
  params = random_params(BASE)
  tokens = random_tokens(13, (B, T))
  out = jax.eval_shape(lambda p, x: Decoder(cfg).apply(p, x, capture_intermediates=True),
                       params, jnp.asarray(tokens))
  logits_shape, state = out
  assert logits_shape.dtype == jnp.float32
  assert state["intermediates"]["embed"]["__call__"][0].dtype == jnp.bfloat16  # computes in bf16
  logits = logits_of(cfg, params, tokens)
  assert logits.dtype == np.float32
  # Close to the float32 model with the same parameters, but not identical: bf16 really ran.
  logits32 = logits_of(BASE, params, tokens)
  np.testing.assert_allclose(logits, logits32, atol=0.15, rtol=0.05)
  assert np.abs(logits - logits32).max() > 1e-4


_GRADS = {}


def _loss_and_grads(cfg, params, tokens):
  """(loss, grads, jaxpr text) of a random linear function of the logits; compiled once."""
  if cfg not in _GRADS:
    weights = jnp.asarray(np.random.default_rng(1).standard_normal((B, T, V)), jnp.float32)

    def loss(p, x):
      return jnp.sum(Decoder(cfg).apply(p, x) * weights)

    traced = jax.jit(jax.value_and_grad(loss)).trace(params, jnp.asarray(tokens))
    _GRADS[cfg] = (traced.lower().compile(), str(traced.jaxpr))
  fn, jaxpr = _GRADS[cfg]
  loss_value, grads = fn(params, jnp.asarray(tokens))
  return loss_value, grads, jaxpr


ONE_LAYER = TINY.replace(num_layers=1)  # remat compiles the backward pass: keep it small


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_changes_memory_not_math(remat, random_params):
  cfg = ONE_LAYER.replace(remat=remat)
  params = params_for(cfg, random_params)
  tokens = random_tokens(14, (B, T))
  loss, grads, plain_jaxpr = _loss_and_grads(cfg.replace(remat="none"), params, tokens)
  loss_r, grads_r, remat_jaxpr = _loss_and_grads(cfg, params, tokens)
  assert "remat" not in plain_jaxpr and "checkpoint" not in plain_jaxpr
  assert "remat" in remat_jaxpr or "checkpoint" in remat_jaxpr, "the remat policy was not applied"
  np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
  flat = jax.tree_util.tree_leaves_with_path(grads)
  flat_r = jax.tree.leaves(grads_r)
  assert len(flat) == len(flat_r)
  for (path, g), g_r in zip(flat, flat_r):
    assert np.abs(np.asarray(g)).max() > 0, jax.tree_util.keystr(path)
    np.testing.assert_allclose(g_r, g, atol=1e-6, rtol=1e-5, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("remat", ["none", "full", "dots", "dots_no_batch"])
@pytest.mark.parametrize("scan_layers", [True, False])
def test_every_remat_policy_is_wired(remat, scan_layers, random_params):
  """Trace only (no compile): a policy other than "none" puts the blocks under checkpoint."""
  cfg = ONE_LAYER.replace(remat=remat, scan_layers=scan_layers)
  params = params_for(cfg, random_params)

  def loss(p):
    return jnp.sum(Decoder(cfg).apply(p, jnp.zeros((1, 8), jnp.int32)))

  jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params))
  assert ("remat" in jaxpr or "checkpoint" in jaxpr) == (remat != "none")


# --- Parameters and output head ----------------------------------------------------------------

def test_llama_style_config_has_lm_head_and_no_biases(param_shapes):
  p = nn.unbox(param_shapes(BASE))["params"]
  assert p["lm_head"].shape == (TINY.d_model, TINY.vocab_size)
  assert "position_embedding" not in p
  names = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(p)]
  assert not [n for n in names if "bias" in n]
  assert set(p["layers"]["mlp"]) == {"wi_gate", "wi_up", "wo"}


def test_gpt2_style_config_has_biases_learned_positions_and_no_lm_head(param_shapes):
  p = nn.unbox(param_shapes(GPT2_LIKE))["params"]
  assert "lm_head" not in p
  assert p["position_embedding"].shape == (TINY.max_seq_len, TINY.d_model)
  layer = p["layers"]
  assert set(layer["attention"]) == {"query", "key", "value", "out", "query_bias", "key_bias",
                                     "value_bias", "out_bias"}
  assert set(layer["mlp"]) == {"wi_up", "wi_up_bias", "wo", "wo_bias"}  # no gate for GELU
  for norm in (layer["attention_norm"], layer["mlp_norm"], p["final_norm"]):
    assert set(norm) == {"scale", "bias"}


def test_attention_bias_adds_only_qkv_biases(param_shapes):
  p = nn.unbox(param_shapes(TINY.replace(attention_bias=True)))["params"]
  assert set(p["layers"]["attention"]) == {"query", "key", "value", "out", "query_bias",
                                           "key_bias", "value_bias"}
  assert "bias" not in p["final_norm"] and "wo_bias" not in p["layers"]["mlp"]


@pytest.mark.parametrize("cfg", [GPT2_LIKE, GEMMA_LIKE], ids=["gpt2_like", "gemma_like"])
def test_tied_logits_are_final_hidden_times_embedding_transpose(cfg, random_params):
  params = random_params(cfg)
  assert "lm_head" not in params["params"]
  tokens = jnp.asarray(random_tokens(15, (B, T)))
  logits, state = jax.jit(lambda p, x: Decoder(cfg).apply(p, x, capture_intermediates=True))(
      params, tokens)
  hidden = np.asarray(state["intermediates"]["final_norm"]["__call__"][0])  # [B, T, D]
  table = np.asarray(params["params"]["embed"]["embedding"])                 # [V, D]
  np.testing.assert_allclose(logits, hidden @ table.T, atol=1e-5, rtol=1e-5)
  # Embedding output (scaled by sqrt(D) for Gemma) is what the first block sees.
  embedded = np.asarray(state["intermediates"]["embed"]["__call__"][0])      # [B, T, D]
  scale = np.sqrt(cfg.d_model) if cfg.scale_embeddings else 1.0
  np.testing.assert_allclose(embedded, table[np.asarray(tokens)] * scale, rtol=1e-6)


def test_real_init_values():
  """The initialisers themselves (other tests use noise): std, zero biases, unit scales."""
  cfg = GPT2_LIKE.replace(init_std=0.05)
  variables = jax.jit(Decoder(cfg).init)(jax.random.key(0, impl="rbg"),
                                         jnp.zeros((1, 8), jnp.int32))
  p = nn.unbox(variables)["params"]
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(p))
  np.testing.assert_allclose(np.std(p["embed"]["embedding"]), 0.05, rtol=0.05)
  np.testing.assert_allclose(np.std(p["layers"]["attention"]["query"]), 0.05, rtol=0.05)
  # Output projections are scaled down by sqrt(2 * num_layers).
  np.testing.assert_allclose(np.std(p["layers"]["mlp"]["wo"]), 0.05 / 2, rtol=0.05)
  np.testing.assert_allclose(np.std(p["layers"]["attention"]["out"]), 0.05 / 2, rtol=0.05)
  assert np.all(p["final_norm"]["scale"] == 1) and np.all(p["layers"]["mlp_norm"]["scale"] == 1)
  for path, x in jax.tree_util.tree_leaves_with_path(p):
    if jax.tree_util.keystr(path).endswith("bias']"):
      assert np.all(x == 0), jax.tree_util.keystr(path)
  # Layers of the scanned stack get different random draws.
  q = p["layers"]["attention"]["query"]
  assert not np.allclose(q[0], q[1])
