"""Fixed-length batches cut from a token stream.

A training batch is a pure function of (seed, step): resuming at step k needs no iterator
state, and every process can cut its own rows of the global batch without talking to the
others. (The packing pipeline of the data issue replaces this with grain.)
"""

import numpy as np

Batch = dict[str, np.ndarray]


def _windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> Batch:
  rows = tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int32)  # [B, T + 1]
  return {"inputs": rows[:, :-1], "targets": rows[:, 1:],
          "loss_mask": np.ones((len(starts), seq_len), np.float32)}


def check_length(tokens: np.ndarray, seq_len: int, split: str) -> None:
  if len(tokens) < seq_len + 2:
    raise ValueError(f"The {split} split has {len(tokens)} tokens, fewer than "
                     f"train.seq_len + 2 = {seq_len + 2}; use more data or a shorter seq_len")


def train_batch(tokens: np.ndarray, batch_size: int, seq_len: int, seed: int, step: int,
                rows: slice = slice(None)) -> Batch:
  """Rows `rows` of the global batch for `step`: uniformly random windows."""
  rng = np.random.default_rng([seed, step])
  starts = rng.integers(0, len(tokens) - seq_len - 1, size=batch_size)
  return _windows(tokens, starts[rows], seq_len)


def eval_batches(tokens: np.ndarray, batch_size: int, seq_len: int, num_batches: int,
                 rows: slice = slice(None)) -> list[Batch]:
  """Evenly spaced windows over the held-out split, the same at every evaluation."""
  starts = np.linspace(0, len(tokens) - seq_len - 1, batch_size * num_batches).astype(np.int64)
  return [_windows(tokens, starts[b * batch_size:(b + 1) * batch_size][rows], seq_len)
          for b in range(num_batches)]
