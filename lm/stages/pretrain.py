"""Pre-training: next-token cross-entropy on packed documents, with optional z-loss.

The loss at the top is a pure function of arrays; the Stage below (lm/train/stage.py is the
contract) wires it to the packed text batches of lm/data/pipeline.py. SFT reuses the same
loss with a loss mask that covers only the assistant's tokens.
"""

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lm.data import pipeline as pipeline_lib
from lm.model import Decoder, ModelConfig

Batch = dict[str, jax.Array]


def loss_fn(apply: Callable, params, batch: Batch, z_loss: float = 0.0
            ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(summed masked nll + z_loss * summed log(Z)^2, sums): `weight` is the number of tokens
  the mask covers, `loss` the summed nll, `z_loss` the summed log(Z)^2. The model computes
  the per-token nll and log Z itself, in chunks when `model.loss_chunk` is set."""
  nll, log_z = apply(params, batch["inputs"], positions=batch.get("positions"),
                     segment_ids=batch.get("segment_ids"), targets=batch["targets"])  # [B, T]
  mask = batch["loss_mask"].astype(jnp.float32)
  nll_sum = jnp.sum(nll * mask)
  z_sum = jnp.sum(jnp.square(log_z) * mask)
  sums = {"weight": jnp.sum(mask), "loss": nll_sum, "z_loss": z_sum}
  return nll_sum + z_loss * z_sum, sums


def token_eval_metrics(totals: dict[str, float], num_bytes: float) -> dict[str, float]:
  """Loss and perplexity of the covered tokens; bits per byte over `num_bytes`, the bytes of
  text they stand for (it compares tokenizers)."""
  loss = totals["loss"] / max(totals["weight"], 1.0)
  return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0)),
          "eval_bits_per_byte": totals["loss"] / math.log(2) / max(num_bytes, 1),
          "eval_tokens": totals["weight"]}


class TokenStage:
  """What pre-training and SFT share: the Decoder, every parameter trained, the token loss."""

  name = "token"
  fields: tuple[str, ...] = ()  # none: documents as text, from data.text_field

  def __init__(self, config: ml_collections.ConfigDict, tokenizer: Any):
    self.tokenizer = tokenizer
    self.z_loss = config.train.z_loss
    self.metric_weights = {"loss": "weight", **({"z_loss": "weight"} if self.z_loss else {})}

  def make_model(self, model_config: ModelConfig) -> Decoder:
    return Decoder(model_config)

  def partition(self, params: Any) -> tuple[Any, Any]:
    return params, None

  def loss(self, apply: Callable, params: Any, frozen: Any, batch: Batch):
    del frozen
    return loss_fn(apply, params, batch, self.z_loss)

  def eval_sums(self, apply: Callable, params: Any, frozen: Any, batch: Batch
                ) -> dict[str, jax.Array]:
    del frozen
    _, sums = loss_fn(apply, params, batch)
    return sums

  def between_steps(self, state: Any, step: int) -> Any:
    del step
    return state


class Stage(TokenStage):
  """Pre-training on documents, packed back to back (lm/data/pipeline.py)."""

  name = "pretrain"

  def train_batches(self, records: Sequence[str], config: ml_collections.ConfigDict,
                    rows: slice, seed: int) -> pipeline_lib.Batches:
    return pipeline_lib.train_batches(records, self.tokenizer, config, rows, seed=seed)

  def eval_set(self, records: Sequence[str], config: ml_collections.ConfigDict,
               rows: slice) -> pipeline_lib.EvalSet:
    return pipeline_lib.eval_set(records, self.tokenizer, config, rows)

  def eval_metrics(self, totals: dict[str, float], eval_set: pipeline_lib.EvalSet
                   ) -> dict[str, float]:
    return token_eval_metrics(totals, eval_set.bytes)  # the documents' bytes, ends included

  def example_batch(self, batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
    return pipeline_lib.example_batch(batch_size, seq_len)
