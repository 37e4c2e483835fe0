"""Log-probabilities of given continuations (`Engine.score`): one forward pass per batch.

Letters: B batch (bucket), T tokens (bucket), V vocab.

A row is its prompt followed by its continuation, right-padded: under the causal mask a
position sees only earlier tokens, so padding after a row's end changes none of its
log-probabilities and rows of different lengths share one program. Shapes are bucketed to
powers of two as the engine's are.
"""

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lm.model import Decoder

MAX_LOGITS = 1 << 28  # float32 logits of one scoring batch: 1 GiB


def token_logprobs(model: Decoder, params: Any, tokens: jax.Array) -> jax.Array:
  """log p(tokens[:, t + 1] | tokens[:, :t + 1]) for every t: [B, T] (the last column 0)."""
  logits = model.apply({"params": params}, tokens).astype(jnp.float32)  # [B, T, V]
  targets = jnp.concatenate([tokens[:, 1:], jnp.zeros_like(tokens[:, :1])], axis=1)  # [B, T]
  chosen = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]  # [B, T]
  logprobs = chosen - jax.nn.logsumexp(logits, axis=-1)  # no second [B, T, V] array
  return logprobs.at[:, -1].set(0.0)


def rows_per_batch(batch_size: int, length: int, vocab: int, multiple: int) -> int:
  """batch_size, or fewer rows (a power of two, at least `multiple`) where the logits of
  batch_size rows of `length` tokens would exceed MAX_LOGITS values."""
  fit = max(1, MAX_LOGITS // (length * vocab))
  return max(multiple, min(batch_size, 1 << (fit.bit_length() - 1)))


def check_rows(prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
               max_len: int, vocab: int) -> tuple[list[list[int]], list[list[int]]]:
  """Token lists, validated: one continuation per prompt, non-empty prompts, ids in range,
  and prompt + continuation within the model's context."""
  if len(prompts) != len(continuations):
    raise ValueError(f"score got {len(prompts)} prompts and {len(continuations)} continuations")
  prompts = [[int(t) for t in np.asarray(p).reshape(-1)] for p in prompts]
  continuations = [[int(t) for t in np.asarray(c).reshape(-1)] for c in continuations]
  for i, (prompt, continuation) in enumerate(zip(prompts, continuations)):
    if not prompt:
      raise ValueError(f"prompt {i} is empty; it needs at least one token (e.g. bos)")
    if len(prompt) + len(continuation) > max_len:
      raise ValueError(f"prompt {i} and its continuation have {len(prompt)} + "
                       f"{len(continuation)} tokens, more than model.max_seq_len={max_len}")
    row = prompt + continuation
    if min(row) < 0 or max(row) >= vocab:
      raise ValueError(f"row {i} has token ids outside [0, model.vocab_size={vocab})")
  return prompts, continuations


def pack(prompts: list[list[int]], continuations: list[list[int]], batch: int, length: int
         ) -> np.ndarray:
  """[batch, length] int32: each prompt + continuation from column 0, zeros after."""
  tokens = np.zeros((batch, length), np.int32)
  for i, (prompt, continuation) in enumerate(zip(prompts, continuations)):
    row = prompt + continuation
    tokens[i, :len(row)] = row
  return tokens


def unpack(logprobs: np.ndarray, prompts: list[list[int]], continuations: list[list[int]]
           ) -> list[np.ndarray]:
  """Row i's continuation log-probs: the columns that predict its continuation tokens."""
  return [logprobs[i, len(p) - 1:len(p) - 1 + len(c)].astype(np.float32)
          for i, (p, c) in enumerate(zip(prompts, continuations))]
