import numpy as np
import pytest

from lm.data import batches


@pytest.fixture(scope="module")
def tokens():
  return np.random.default_rng(0).integers(0, 256, size=10_000).astype(np.uint16)


def test_batches_are_a_function_of_seed_and_step(tokens):
  a = batches.train_batch(tokens, 8, 32, seed=1, step=5)
  b = batches.train_batch(tokens, 8, 32, seed=1, step=5)
  c = batches.train_batch(tokens, 8, 32, seed=1, step=6)
  d = batches.train_batch(tokens, 8, 32, seed=2, step=5)
  np.testing.assert_array_equal(a["inputs"], b["inputs"])
  assert not np.array_equal(a["inputs"], c["inputs"])
  assert not np.array_equal(a["inputs"], d["inputs"])


def test_targets_are_inputs_shifted_by_one(tokens):
  batch = batches.train_batch(tokens, 4, 16, seed=0, step=0)
  assert batch["inputs"].shape == batch["targets"].shape == (4, 16)
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  assert batch["loss_mask"].sum() == 4 * 16


def test_process_shards_are_disjoint_and_cover_the_global_batch(tokens):
  whole = batches.train_batch(tokens, 8, 16, seed=3, step=7)
  parts = [batches.train_batch(tokens, 8, 16, seed=3, step=7, rows=slice(2 * i, 2 * i + 2))
           for i in range(4)]
  np.testing.assert_array_equal(np.concatenate([p["inputs"] for p in parts]), whole["inputs"])


def test_eval_batches_are_fixed_and_span_the_split(tokens):
  first = batches.eval_batches(tokens, 4, 16, num_batches=3)
  second = batches.eval_batches(tokens, 4, 16, num_batches=3)
  assert len(first) == 3
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
  np.testing.assert_array_equal(first[0]["inputs"][0], tokens[:16])
  np.testing.assert_array_equal(first[-1]["targets"][-1], tokens[-16:])


def test_too_short_a_split_is_an_error():
  with pytest.raises(ValueError, match="train.seq_len"):
    batches.check_length(np.zeros(10, np.uint16), 32, "eval")
