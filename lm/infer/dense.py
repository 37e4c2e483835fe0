"""Dense retrieval: a text's vector is an lm model's final hidden states averaged over its
tokens (`Engine.embed`); passages rank by the cosine similarity of their vector to the
query's (`retrieval.Index(..., dense=engine)`).

Letters: B batch (bucket), T tokens (bucket), D model width.

Rows are right-padded: under the causal mask no token sees the padding after it, and the
mean covers each row's own tokens only, so padding changes no vector. A language model's
hidden states were never trained to make similar texts close; experiments/limits/README.md
measures how this ranking compares with BM25.
"""

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lm.model import Decoder


def mean_hidden(model: Decoder, params: Any, tokens: jax.Array, lengths: jax.Array
                ) -> jax.Array:
  """The mean of each row's final-norm hidden states over its first `lengths` tokens:
  tokens [B, T], lengths [B] -> [B, D] float32 (zeros for an empty row)."""
  hidden = model.apply({"params": params}, tokens, hidden=True).astype(jnp.float32)  # [B, T, D]
  mask = (jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]).astype(jnp.float32)  # [B, T]
  total = jnp.einsum("BTD,BT->BD", hidden, mask)
  return total / jnp.maximum(lengths, 1).astype(jnp.float32)[:, None]


def unit(vectors: np.ndarray) -> np.ndarray:
  """Rows scaled to length 1 (a zero row stays zero)."""
  norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
  return vectors / np.maximum(norms, 1e-12)


class Ranker:
  """Passages' unit vectors under an engine's model; `top(query, k)` ranks by cosine."""

  def __init__(self, engine: Any, texts: Sequence[str]):
    self.engine = engine
    self.vectors = self.embed(texts)  # [N, D]

  def embed(self, texts: Sequence[str]) -> np.ndarray:
    limit = self.engine.config.max_seq_len
    rows = [[int(t) for t in self.engine.tokenizer.encode(text)][:limit] for text in texts]
    return unit(self.engine.embed(rows))

  def top(self, query: str, k: int) -> list[tuple[int, float]]:
    """(passage index, cosine) of the k best, best first."""
    scores = self.vectors @ self.embed([query])[0]  # [N]
    best = np.argsort(-scores, kind="stable")[:k]
    return [(int(i), float(scores[i])) for i in best]
