"""Tests for Engine.score (lm/infer/scoring.py): per-token log-probs of given continuations
equal those of an independent full forward pass over each row alone, unpadded."""

import jax
import numpy as np
import pytest

from lm.infer import scoring
from lm.model import Decoder

ROWS = [("Hello", " world"), ("a", "bcdefghijklmnop"), ("The quick brown fox", " j")]


def reference(engine, prompt, continuation):
  """log p of each continuation token from one forward pass over this row alone."""
  row = np.array([prompt + continuation], np.int32)  # [1, T]: no padding, its own shape
  logits = np.asarray(Decoder(engine.config).apply({"params": engine.params}, row)[0],
                      np.float64)  # [T, V]
  logits -= logits.max(-1, keepdims=True)
  logprobs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  positions = np.arange(len(prompt) - 1, len(prompt) + len(continuation) - 1)
  return logprobs[positions, continuation]


def test_score_equals_the_forward_pass_of_each_row(engine):
  prompts = [list(engine.tokenizer.encode(p, add_bos=True)) for p, _ in ROWS]
  continuations = [list(engine.tokenizer.encode(c)) for _, c in ROWS]
  # batch_size 2: the rows come in two batches (bucketed 2 and 1), padded to different lengths.
  for batch_size in (64, 2):
    scores = engine.score(prompts, continuations, batch_size=batch_size)
    assert [s.shape for s in scores] == [(len(c),) for c in continuations]
    for prompt, continuation, got in zip(prompts, continuations, scores):
      np.testing.assert_allclose(got, reference(engine, prompt, continuation), atol=2e-5)


def test_score_rejects_bad_rows(engine):
  with pytest.raises(ValueError, match="2 prompts and 1 continuations"):
    engine.score([[1], [2]], [[3]])
  with pytest.raises(ValueError, match="prompt 0 is empty"):
    engine.score([[]], [[3]])
  with pytest.raises(ValueError, match="model.max_seq_len"):
    engine.score([[1] * engine.config.max_seq_len], [[3]])


def test_long_rows_of_a_large_vocabulary_come_in_smaller_batches(engine):
  assert scoring.rows_per_batch(64, 128, 512, 1) == 64
  assert scoring.rows_per_batch(64, 512, 49152, 1) == 8  # 8 * 512 * 49152 <= 2**28 < 16 * ...
  assert scoring.rows_per_batch(64, 512, 49152, 16) == 16  # never below the mesh's multiple
  assert engine.score([], []) == []
