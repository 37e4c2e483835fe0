"""The stage contract: what the training loop calls, and nothing else it knows of a stage.

A stage (lm/stages/: pre-training, SFT, and later reward models, DPO, RL) is a class built
from the resolved config and the tokenizer. The loop never imports one: the caller (the CLI,
or `lm.stages.train_and_evaluate`) resolves `config.stage` in the registry and passes the
class to `lm.train.loop.train_and_evaluate`.

Parameters come in two trees. `trainable` is differentiated and updated by the optimizer;
`frozen` (a reference policy, a LoRA base, or None) sits in the train state beside it, sharded
by the same logical-axis rules, checkpointed with it, and never seen by the optimizer. The
stage splits the model's parameter tree (fresh or imported) into the two with `partition`,
and the same function applied to the tree of shardings places the frozen tree.

The loss returns `(summed loss, sums)`: sums over the examples of the batch, never means,
so gradient accumulation and data parallelism add them up before the one division by
`sums["weight"]` (the number of tokens, pairs, ... the loss covers). `metric_weights` names
the metrics the stage reports (always `loss`) and, for each, the entry of `sums` that it is
averaged by: `metric = sums[name] / sums[metric_weights[name]]`.
"""

from typing import Any, Callable, Mapping, Protocol, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from lm.model import ModelConfig

Batch = dict[str, jax.Array]
Apply = Callable[..., jax.Array]   # apply(params, tokens, **kwargs): the model's forward pass


class Batches(Protocol):
  """A process's rows of every global batch, resumable (lm/data/pipeline.py's Batches)."""
  fingerprint: dict
  seed: int
  shards: list[int]

  def __next__(self) -> dict[str, np.ndarray]: ...
  def get_state(self) -> dict: ...
  def set_state(self, state: dict) -> None: ...
  def close(self) -> None: ...


class Stage(Protocol):
  """One training stage; `Stage(config, tokenizer)` builds it (config resolved, locked)."""

  name: str
  fields: tuple[str, ...]             # the record fields the stage reads (data.fields)
  metric_weights: Mapping[str, str]   # reported metric -> the sums entry that weights it
  # Optional, read with getattr:
  #   pretrained_key: str   the subtree of the module's parameters `init_from` fills (a reward
  #                         model's "decoder"); the rest is initialised fresh. Absent: all.
  #   check_record(record)  raises ValueError naming the malformed field of a jsonl: record
  #                         (the source adds the file and line), while the source is prepared
  #   rows_per_example: int the rows one example of the batch takes (a preference pair: 2):
  #                         tokens/s and MFU count the tokens of all of them. Absent: 1.
  #   frozen_is_start: bool the frozen tree is a copy of the model at its start, read like the
  #                         params (DPO's reference); LoRA then keeps no copy: adapters off.
  #   prepare(setup, workdir, run)  one-off work before the batches exist, e.g. scoring the
  #                         records with the model at step 0 (`run(fn, batch)`, the loop's
  #                         StartModel); what it computes it may keep in `workdir` for resume
  #   import_leaf(path, leaf) -> leaf
  #                         each leaf of `init_from` as it is read (QLoRA: quantized there,
  #                         so no host holds a float copy of the whole import)
  #   load_extra(params)    the model's whole tree at step 0 with more pretrained subtrees
  #                         filled (PPO's value model from a reward model's workdir)
  #   make_step(setup, workdir) -> step(state, batch) -> (state, metrics): the stage's own
  #                         step instead of the loop's jitted update of `loss`, called as it
  #                         is, unjitted, with the step's global batch (RL: rollouts of the
  #                         policy in `state` and host rewards around one update, GRPO, or
  #                         several, PPO; `lm.train.loop.jit_train_step` builds the update);
  #                         `metrics` (device arrays or host floats) needs "loss" and
  #                         "skipped_updates", and the state's step must advance by one
  #   make_eval_step(setup) -> eval_step(params, frozen, batch) -> sums, instead of jitting
  #                         `eval_sums` (RL: sampled replies scored on the host)

  def make_model(self, model_config: ModelConfig) -> nn.Module:
    """The module trained: the Decoder, or the Decoder with a head."""

  def partition(self, params: Any) -> tuple[Any, Any]:
    """(trainable, frozen) of the module's parameter tree; frozen may be None. A pure tree
    function: it is applied to parameters, abstract shapes and shardings alike."""

  def loss(self, apply: Apply, params: Any, frozen: Any, batch: Batch
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(summed loss, sums with "weight" and every metric's sum), differentiated in params."""

  def eval_sums(self, apply: Apply, params: Any, frozen: Any, batch: Batch
                ) -> dict[str, jax.Array]:
    """The sums evaluation adds up over the held-out batches."""

  def eval_metrics(self, totals: dict[str, float], eval_set: Any) -> dict[str, float]:
    """Evaluation metrics (eval_loss, ...) from the sums added over every held-out batch of
    `eval_set` (which may say more about them, e.g. the bytes of their text)."""

  def train_batches(self, records: Sequence, config: ml_collections.ConfigDict, rows: slice,
                    seed: int) -> Batches:
    """This process's `rows` of every training batch, shuffled by `seed`."""

  def eval_set(self, records: Sequence, config: ml_collections.ConfigDict, rows: slice) -> Any:
    """What every evaluation scores: `.batches`, this process's rows of fixed held-out
    batches (lm/data/pipeline.py's EvalSet)."""

  def example_batch(self, batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
    """Zeros shaped like a training batch (to compile ahead of time, e.g. `lm plan`)."""

  def between_steps(self, state: Any, step: int) -> Any:
    """Called after every step with the new train state; returns the state to go on with
    (the identity for stages without a rollout phase)."""


StageType = Callable[[ml_collections.ConfigDict, Any], Stage]
