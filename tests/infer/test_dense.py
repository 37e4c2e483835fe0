"""Dense retrieval (lm/infer/dense.py, Engine.embed, retrieval.Index(dense=...)) on the
session's tiny engine: vectors against the model run on a row alone, and the ranking. Both
tests embed 4 texts (one batch bucket) so that they share the compiled program."""

import jax
import jax.numpy as jnp
import numpy as np

from lm.infer import retrieval

TEXTS = ["the river runs past old towns", "a tower built of stone", "grain and trade",
         "quiet hills and markets"]


def test_embed_is_each_rows_own_mean_hidden_state(engine):
  """Rows of different lengths padded into one batch: a vector equals the mean of the final
  hidden states of its row run alone, unpadded (checked on the shortest row, the most
  padded)."""
  rows = [[int(t) for t in engine.tokenizer.encode(text)] for text in TEXTS]
  vectors = engine.embed(rows)
  assert vectors.shape == (4, engine.config.d_model)
  hidden = jax.jit(lambda params, x: engine.model.apply({"params": params}, x, hidden=True))
  alone = np.asarray(hidden(engine.params, jnp.asarray([rows[2]])))[0]  # [T, D]
  np.testing.assert_allclose(vectors[2], alone.mean(0), rtol=1e-5, atol=1e-5)
  assert not np.allclose(vectors[2], vectors[3], atol=1e-3)


def test_dense_index_ranks_by_cosine(engine):
  index = retrieval.Index([retrieval.Passage("x.txt", i, t) for i, t in enumerate(TEXTS)],
                          dense=engine)
  for text in TEXTS:  # a passage's own text is its nearest vector (cosine 1)
    assert index.search(text, k=1)[0].text == text
  vectors = engine.embed([[int(t) for t in engine.tokenizer.encode(s)] for s in TEXTS])
  vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
  order = np.argsort(-(vectors @ vectors[2]))
  assert [p.text for p in index.search(TEXTS[2], k=4)] == [TEXTS[i] for i in order]
