"""Tests for lm/infer/sampling.py: greedy, temperature, top-k and top-p, with log-probs.

The statistical tests draw thousands of samples from fixed logits in one vmapped call:
no draw may ever fall outside the top-k / top-p set, every token of the set must appear,
and the frequencies must match the renormalised probabilities.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.infer import sampling
from lm.infer.sampling import SamplingParams

V = 32
DRAWS = 20_000
LOGITS = np.random.default_rng(0).standard_normal(V).astype(np.float32) * 2.0


def draw(temperature: float, top_k: int, top_p: float, logits=LOGITS, filtered=True):
  batch = jnp.broadcast_to(jnp.asarray(logits), (DRAWS, V))
  keys = jax.random.split(jax.random.key(1), DRAWS)
  full = lambda x, dtype: jnp.full((DRAWS,), x, dtype)
  tokens, logprobs = jax.jit(sampling.sample, static_argnames=("filtered", "greedy_only"))(
      keys, batch, full(temperature, jnp.float32), full(top_k, jnp.int32),
      full(top_p, jnp.float32), filtered=filtered)
  return np.asarray(tokens), np.asarray(logprobs)


def expected_set(temperature: float, top_k: int, top_p: float) -> tuple[np.ndarray, np.ndarray]:
  """(token ids of the set, their renormalised probabilities), computed in float64."""
  order = np.argsort(-LOGITS, kind="stable")
  k = top_k or V
  kept = order[:k]
  probs = np.exp(LOGITS[kept] / temperature - np.max(LOGITS[kept] / temperature))
  probs /= probs.sum()
  cumulative_before = np.cumsum(probs) - probs
  kept = kept[cumulative_before < top_p]
  probs = probs[:len(kept)] / probs[:len(kept)].sum()
  return kept, probs


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (1.0, 5, 1.0), (1.0, 0, 0.8), (0.7, 8, 0.9), (2.0, 1, 1.0), (1.0, 0, 0.05), (1.0, 0, 1.0)],
    ids=["top_k", "top_p", "both_with_temperature", "top_1", "tiny_p_keeps_one", "none"])
def test_samples_stay_in_the_set_with_the_right_frequencies(temperature, top_k, top_p):
  tokens, logprobs = draw(temperature, top_k, top_p)
  kept, probs = expected_set(temperature, top_k, top_p)
  assert set(np.unique(tokens)) <= set(kept.tolist())  # never outside the set
  counts = np.array([(tokens == t).sum() for t in kept])
  frequencies = counts / DRAWS
  # Binomial standard error; 5 sigma keeps the test from flaking while catching wrong sets.
  sigma = np.sqrt(probs * (1 - probs) / DRAWS)
  assert np.all(np.abs(frequencies - probs) <= 5 * sigma + 1e-3), (frequencies, probs)
  if len(kept) <= 10:
    assert np.all(counts > 0)  # every member of a small set appears
  # Log-probabilities are the model's own (raw logits), whatever the sampling settings.
  reference = jax.nn.log_softmax(LOGITS)
  np.testing.assert_allclose(logprobs, np.asarray(reference)[tokens], atol=1e-5)


def test_greedy_takes_the_argmax_whatever_the_key():
  logits = np.random.default_rng(2).standard_normal((6, V)).astype(np.float32)
  keys = jax.random.split(jax.random.key(0), 6)
  zeros = jnp.zeros((6,))
  tokens, logprobs = sampling.sample(keys, jnp.asarray(logits), zeros, jnp.zeros((6,), jnp.int32),
                                     jnp.ones((6,)), greedy_only=True)
  np.testing.assert_array_equal(tokens, logits.argmax(-1))
  np.testing.assert_allclose(logprobs, jax.nn.log_softmax(logits)[np.arange(6), logits.argmax(-1)],
                             atol=1e-6)
  # The same through the sampling path: rows with temperature 0 ignore their keys.
  again, _ = sampling.sample(keys, jnp.asarray(logits), zeros, jnp.full((6,), 3, jnp.int32),
                             jnp.full((6,), 0.5), filtered=True)
  np.testing.assert_array_equal(again, tokens)


def test_unfiltered_path_equals_filtered_path_with_no_limits():
  plain, _ = draw(1.3, 0, 1.0, filtered=False)
  filtered, _ = draw(1.3, 0, 1.0, filtered=True)
  np.testing.assert_array_equal(plain, filtered)


def test_filter_logits_rows_are_independent():
  logits = jnp.asarray(np.stack([LOGITS, LOGITS]))
  out = np.asarray(sampling.filter_logits(logits, jnp.array([1.0, 1.0]), jnp.array([3, 0]),
                                          jnp.array([1.0, 1.0])))
  assert np.isfinite(out[0]).sum() == 3 and np.isfinite(out[1]).sum() == V


@pytest.mark.parametrize("kwargs,message", [
    (dict(temperature=-1.0), "temperature"), (dict(top_k=-2), "top_k"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p")])
def test_sampling_params_name_the_bad_field(kwargs, message):
  with pytest.raises(ValueError, match=message):
    SamplingParams(**kwargs)


def test_top_p_one_keeps_every_token_at_low_temperature():
  # At temperature 0.3 the float32 running sum of 50 sorted probabilities reaches 1.0 long
  # before the last token; top_p=1 must still keep all of them.
  logits = np.random.default_rng(3).standard_normal((1, 50)).astype(np.float32) * 2.0
  one = jnp.ones((1,))
  out = np.asarray(sampling.filter_logits(jnp.asarray(logits), one * 0.3,
                                          jnp.zeros((1,), jnp.int32), one))
  assert np.isfinite(out).all()
  np.testing.assert_allclose(out, logits / 0.3, rtol=1e-6)  # plain temperature scaling


def test_a_filtered_row_does_not_truncate_its_unfiltered_neighbours():
  """Row 1 (top_k=0, top_p=1) next to row 0 (top_k=3) draws exactly what it draws alone, with
  its support the whole vocabulary, at temperature 0.3 where float32 sums saturate."""
  rows = 4096
  logits = np.random.default_rng(4).standard_normal((1, 50)).astype(np.float32) * 2.0
  batch = jnp.asarray(np.repeat(logits, 2 * rows, axis=0))  # rows alternate filtered / plain
  keys = jax.random.split(jax.random.key(5), 2 * rows)
  temperature = jnp.full((2 * rows,), 0.3)
  top_k = jnp.asarray(np.tile([3, 0], rows), jnp.int32)
  top_p = jnp.ones((2 * rows,))
  mixed, _ = sampling.sample(keys, batch, temperature, top_k, top_p, filtered=True)
  alone, _ = sampling.sample(keys[1::2], batch[1::2], temperature[1::2], top_k[1::2],
                             top_p[1::2], filtered=False)
  np.testing.assert_array_equal(np.asarray(mixed)[1::2], np.asarray(alone))
  assert set(np.unique(np.asarray(mixed)[0::2])) <= set(np.argsort(-logits[0])[:3].tolist())
  scaled = np.asarray(sampling.sampling_logits(batch[:2], temperature[:2], top_k[:2], top_p[:2]))
  assert np.isfinite(scaled[0]).sum() == 3
  assert np.isfinite(scaled[1]).all()
  np.testing.assert_allclose(scaled[1], logits[0] / 0.3, rtol=1e-6)
