"""Choosing the next token: greedy, temperature, top-k and top-p (nucleus), per row.

Letters: B batch, V vocab.

Pure functions of logits and explicit keys, so they run inside the decoding loop; every
row carries its own temperature, k and p, so requests with different settings share a
batch. The order is Hugging Face's: temperature, then top-k, then top-p on what is left.
"""

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  temperature: float = 1.0  # softmax temperature; 0 is greedy (argmax)
  top_k: int = 0            # keep the k most likely tokens; 0 keeps all
  top_p: float = 1.0        # keep the smallest set whose probability reaches p; 1 keeps all

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f"temperature={self.temperature} must be >= 0 (0: greedy)")
    if self.top_k < 0:
      raise ValueError(f"top_k={self.top_k} must be >= 0 (0: no limit)")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p={self.top_p} must be in (0, 1] (1: no limit)")

  @property
  def filters(self) -> bool:
    return self.top_k > 0 or self.top_p < 1


GREEDY = SamplingParams(temperature=0.0)


def filter_logits(logits: jax.Array, temperature: jax.Array, top_k: jax.Array,
                  top_p: jax.Array) -> jax.Array:
  """Temperature-scaled logits [B, V] with -inf outside each row's top-k / top-p set.

  temperature [B] (> 0 where it matters), top_k [B] int (0: all), top_p [B] (1: all). The
  set always keeps the most likely token; ties at its edge are all kept. A row with
  top_p >= 1 keeps every token of its top-k: its float32 running sum may reach 1 before the
  last token (at low temperature, well before), and `before < 1` would then drop the tail.
  """
  scaled = logits / jnp.maximum(temperature, 1e-6)[:, None]
  vocab = logits.shape[-1]
  ordered = -jnp.sort(-scaled, axis=-1)  # [B, V] descending
  rank = jnp.arange(vocab)[None, :]
  k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)[:, None]
  in_top_k = rank < k
  probs = jax.nn.softmax(jnp.where(in_top_k, ordered, -jnp.inf), axis=-1)
  before = jnp.cumsum(probs, axis=-1) - probs  # probability of the tokens ranked above
  keep = in_top_k & ((before < top_p[:, None]) | (top_p[:, None] >= 1))
  kept = jnp.sum(keep, axis=-1)  # >= 1: rank 0 has nothing before it
  threshold = jnp.take_along_axis(ordered, (kept - 1)[:, None], axis=-1)  # [B, 1]
  return jnp.where(scaled >= threshold, scaled, -jnp.inf)


def sampling_logits(logits: jax.Array, temperature: jax.Array, top_k: jax.Array,
                    top_p: jax.Array) -> jax.Array:
  """The logits [B, V] each row draws from: temperature-scaled, and truncated only on rows
  that ask for it (top_k > 0 or top_p < 1), so a row without limits draws exactly what it
  draws alone, whatever its neighbours ask."""
  plain = logits / jnp.maximum(temperature, 1e-6)[:, None]
  limited = (top_k > 0) | (top_p < 1)  # [B]
  return jnp.where(limited[:, None], filter_logits(logits, temperature, top_k, top_p), plain)


def sample(keys: jax.Array, logits: jax.Array, temperature: jax.Array, top_k: jax.Array,
           top_p: jax.Array, filtered: bool = True, greedy_only: bool = False
           ) -> tuple[jax.Array, jax.Array]:
  """(tokens [B] int32, their log-probabilities [B]) from logits [B, V] (float32).

  keys [B] are per-row typed keys; rows with temperature 0 take the argmax. The
  log-probability is under the model itself (log-softmax of the raw logits, before
  temperature and truncation): what training computes, and what RL compares against.
  `filtered=False` and `greedy_only=True` are static promises (no row uses top-k / top-p;
  every row is greedy) that skip the sort and the random draw; with `filtered=True`, each
  row is truncated or not by its own settings.
  """
  logprobs = jax.nn.log_softmax(logits, axis=-1)
  tokens = jnp.argmax(logits, axis=-1)
  if not greedy_only:
    scaled = (sampling_logits(logits, temperature, top_k, top_p) if filtered
              else logits / jnp.maximum(temperature, 1e-6)[:, None])
    drawn = jax.vmap(jax.random.categorical)(keys, scaled)
    tokens = jnp.where(temperature > 0, drawn, tokens)
  tokens = tokens.astype(jnp.int32)
  return tokens, jnp.take_along_axis(logprobs, tokens[:, None], axis=-1)[:, 0]
