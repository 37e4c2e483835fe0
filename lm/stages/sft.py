"""Supervised fine-tuning (`stage="sft"`): next-token cross-entropy on the assistant's tokens.

Records are conversations (lm/data/formats.py: {"messages": [...]} or {"prompt",
"completion"}), rendered with the tokenizer's chat template; the loss mask covers every
assistant turn with its end-of-turn token, never the system or user turns. The loss is
pre-training's (lm/stages/pretrain.py) under that mask, so the reported `loss` is the mean
negative log-likelihood per assistant token.

Rows hold whole conversations: first-fit packed with segment ids and positions that restart
per conversation (attention never crosses one), or with `data.pack=False` one per row,
padded. A conversation longer than `train.seq_len` + 1 tokens is cut to that length
(`data.truncate="cut"`) or skipped (`"drop"`); how many, is counted and logged when training
starts. Start from a pre-trained or imported model with `init_from` (a workdir or hf:DIR).
"""

import dataclasses
from typing import Any, Sequence

from absl import logging
import ml_collections
import numpy as np

from lm import config as config_lib
from lm.data import formats
from lm.data import pipeline as pipeline_lib
from lm.stages import pretrain

SCAN_RECORDS = 20_000  # records rendered up front to count the conversations truncation hits


@dataclasses.dataclass(frozen=True)
class ChatExample:
  """record -> {"inputs", "targets", "loss_mask"} of at most `seq_len` tokens (or None: the
  record is dropped, or has no assistant token left). Top-level: grain workers pickle it."""
  tokenizer: Any
  fields: tuple[str, ...]
  seq_len: int
  truncate: str   # "cut" | "drop"

  @property
  def name(self) -> str:
    return self.tokenizer.name

  def render(self, record: dict) -> tuple[np.ndarray, np.ndarray]:
    """(ids [N], assistant mask [N]) of the whole conversation."""
    return formats.render_with_mask(self.tokenizer, formats.messages_of(record, self.fields))

  def __call__(self, record: dict) -> dict[str, np.ndarray] | None:
    ids, mask = self.render(record)
    if len(ids) > self.seq_len + 1:
      if self.truncate == "drop":
        return None
      ids, mask = ids[:self.seq_len + 1], mask[:self.seq_len + 1]
    loss_mask = mask[1:].astype(np.float32)   # target i is token i + 1
    if len(ids) < 2 or not loss_mask.any():
      return None
    return {"inputs": ids[:-1], "targets": ids[1:], "loss_mask": loss_mask}


@dataclasses.dataclass
class Counts:
  """What truncation does to the training records (of the first SCAN_RECORDS)."""
  scanned: int = 0
  too_long: int = 0          # longer than seq_len + 1 tokens: cut or dropped
  assistant_tokens: int = 0
  assistant_tokens_lost: int = 0  # assistant tokens beyond the cut (or in dropped records)


def count_truncation(example: ChatExample, records: Sequence) -> Counts:
  counts = Counts()
  for i in range(min(len(records), SCAN_RECORDS)):
    ids, mask = example.render(records[i])
    counts.scanned += 1
    counts.assistant_tokens += int(mask[1:].sum())
    if len(ids) > example.seq_len + 1:
      counts.too_long += 1
      kept = int(mask[1:example.seq_len + 1].sum()) if example.truncate == "cut" else 0
      counts.assistant_tokens_lost += int(mask[1:].sum()) - kept
  return counts


class Stage(pretrain.TokenStage):
  """SFT: the Decoder, every parameter trained, the token loss on assistant tokens."""

  name = "sft"
  fields = ("messages",)

  def __init__(self, config: ml_collections.ConfigDict, tokenizer: Any):
    super().__init__(config, tokenizer)
    self.fields = config_lib.data_fields(config, Stage)
    self.example = ChatExample(tokenizer, self.fields, config.train.seq_len, config.data.truncate)
    if "messages" not in self.fields and not {"prompt", "completion"} <= set(self.fields):
      raise ValueError(f"data.fields={config.data.fields!r}: the SFT formats are 'messages' "
                       "(chat) and 'prompt,completion'")
    self.counts: Counts | None = None

  def train_batches(self, records: Sequence, config: ml_collections.ConfigDict, rows: slice,
                    seed: int) -> pipeline_lib.Batches:
    if self.counts is None:
      self.counts = count_truncation(self.example, records)
      c = self.counts
      if c.too_long:
        logging.warning(
            "%d of the first %d conversations are longer than train.seq_len=%d + 1 tokens: "
            "data.truncate=%r %s them (%d of %d assistant tokens lost)", c.too_long, c.scanned,
            self.example.seq_len, self.example.truncate,
            "cuts" if self.example.truncate == "cut" else "drops", c.assistant_tokens_lost,
            c.assistant_tokens)
      else:
        logging.info("All of the first %d conversations fit train.seq_len=%d", c.scanned,
                     self.example.seq_len)
    return pipeline_lib.example_batches(records, self.example, config, rows, seed)

  def eval_set(self, records: Sequence, config: ml_collections.ConfigDict,
               rows: slice) -> pipeline_lib.EvalSet:
    return pipeline_lib.example_eval_set(records, self.example, config, rows)

  def eval_metrics(self, totals: dict[str, float], eval_set: pipeline_lib.EvalSet
                   ) -> dict[str, float]:
    """Loss, perplexity and count of the held-out assistant tokens (no bits per byte: the
    end-of-turn tokens stand for no text)."""
    metrics = pretrain.token_eval_metrics(totals, 0)
    del metrics["eval_bits_per_byte"]
    return metrics

  def example_batch(self, batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
    return pipeline_lib.example_batch(batch_size, seq_len)
