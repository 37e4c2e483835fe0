"""What the preference stages (reward model, DPO) share: pairs of replies as padded rows.

Letters: B pairs, T tokens.

A preference record (lm/data/formats.py: prompt, chosen, rejected, optional margin and
p_chosen) becomes two rows, prompt + chosen reply and prompt + rejected reply, each rendered
with the chat template and padded to `train.seq_len` (never packed: a pair is compared row
against row). Per side the batch holds

  <side>_inputs     [B, T] int32    the rendered tokens, zeros after the row's end
  <side>_targets    [B, T] int32    the next token at every position
  <side>_loss_mask  [B, T] float32  1 where the target is a token of the reply (with its
                                    end-of-turn token), 0 on the prompt and the padding
  <side>_last       [B] int32       the position of the reply's last token, its end-of-turn
                                    token (a reward head reads there, having seen the whole
                                    prompt and reply; with reward.read_at="reply_end" the
                                    token before it)

and `margin`, `p_chosen`, `weight` [B] float32, and, when the records carry the reference's
log-probs (DPO's precomputed reference, lm/stages/reference.py), `chosen_reference` and
`rejected_reference` [B] float32 (weight 1 for a pair, 0 for the empty rows
that fill the last held-out batch: every sum a stage reports is weighted by it). A
conversation longer than `train.seq_len` tokens loses the tail of its reply (`data.truncate="cut"`) or the whole pair is skipped ("drop");
so is a pair whose reply would keep no token.
"""

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lm.data import formats
from lm.data import pipeline as pipeline_lib

SIDES = ("chosen", "rejected")
REFERENCE = "reference_logps"   # a record field: the reference's summed log-probs [2]
Batch = dict[str, jax.Array]


def reply_logps(nll: jax.Array, loss_mask: jax.Array) -> jax.Array:
  """Summed log-probability [B] of each row's reply tokens from the per-token negative
  log-likelihoods [B, T] (padding and prompt masked)."""
  return -jnp.sum(nll * loss_mask.astype(jnp.float32), axis=-1)


def both_sides(batch: dict[str, jax.Array], key: str) -> jax.Array:
  """chosen rows then rejected rows of `key`: [2B, ...]."""
  return jnp.concatenate([batch[f"chosen_{key}"], batch[f"rejected_{key}"]], axis=0)


@dataclasses.dataclass(frozen=True)
class PairRow:
  """record -> the padded rows of a pair (or None: skipped). Top-level: grain pickles it."""
  tokenizer: Any
  seq_len: int
  truncate: str   # "cut" | "drop"
  read_at: str = "end_of_turn"   # the `last` position: formats.read_position

  @property
  def name(self) -> str:
    return self.tokenizer.name

  def side(self, messages: list[dict], reply: str) -> dict[str, np.ndarray] | None:
    ids, mask = formats.render_reply(self.tokenizer, messages, reply)
    t = self.seq_len
    last = min(formats.read_position(mask, self.read_at), t - 1)  # a cut row: its last token
    if len(ids) > t:
      if self.truncate == "drop":
        return None
      ids, mask = ids[:t], mask[:t]
    if not mask[1:].any():
      return None
    inputs, targets, loss_mask = (np.zeros(t, np.int32), np.zeros(t, np.int32),
                                  np.zeros(t, np.float32))
    inputs[:len(ids)] = ids
    targets[:len(ids) - 1] = ids[1:]
    loss_mask[:len(ids) - 1] = mask[1:]
    return {"inputs": inputs, "targets": targets, "loss_mask": loss_mask,
            "last": np.int32(last)}

  def __call__(self, record: dict) -> dict[str, np.ndarray] | None:
    messages, chosen, rejected, margin, p_chosen = formats.preference_of(record)
    row = {"margin": np.float32(margin), "p_chosen": np.float32(p_chosen),
           "weight": np.float32(1.0)}
    if REFERENCE in record:
      row.update({f"{side}_reference": np.float32(v) for side, v in zip(SIDES, record[REFERENCE])})
    for side, reply in zip(SIDES, (chosen, rejected)):
      rendered = self.side(messages, reply)
      if rendered is None:
        return None
      row.update({f"{side}_{key}": value for key, value in rendered.items()})
    return row


def example_batch(batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
  """Zeros shaped like a pair batch (to compile ahead of time)."""
  batch = {"margin": np.zeros(batch_size, np.float32), "p_chosen": np.ones(batch_size, np.float32),
           "weight": np.ones(batch_size, np.float32)}
  for side in SIDES:
    batch.update({f"{side}_inputs": np.zeros((batch_size, seq_len), np.int32),
                  f"{side}_targets": np.zeros((batch_size, seq_len), np.int32),
                  f"{side}_loss_mask": np.ones((batch_size, seq_len), np.float32),
                  f"{side}_last": np.full(batch_size, seq_len - 1, np.int32)})
  return batch


class PairStage:
  """The data side of a preference stage: records, checks, padded pair batches."""

  fields = formats.PREFERENCE_FIELDS
  rows_per_example = 2   # chosen and rejected: tokens/s counts both

  def __init__(self, config: ml_collections.ConfigDict, tokenizer: Any,
               read_at: str = "end_of_turn"):
    self.tokenizer = tokenizer
    self.row = PairRow(tokenizer, config.train.seq_len, config.data.truncate, read_at)

  def check_record(self, record: dict) -> None:
    formats.preference_of(record)

  def train_batches(self, records: Sequence, config: ml_collections.ConfigDict, rows: slice,
                    seed: int) -> pipeline_lib.Batches:
    return pipeline_lib.padded_batches(records, self.row, config, rows, seed)

  def eval_set(self, records: Sequence, config: ml_collections.ConfigDict,
               rows: slice) -> pipeline_lib.EvalSet:
    padding = {key: np.zeros_like(value[0])
               for key, value in self.example_batch(1, config.train.seq_len).items()}
    return pipeline_lib.padded_eval_set(records, self.row, config, rows, padding)

  def example_batch(self, batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
    return example_batch(batch_size, seq_len)

  def between_steps(self, state: Any, step: int) -> Any:
    del step
    return state

