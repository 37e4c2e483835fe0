"""Direct preference optimisation (`stage="dpo"`): the policy learns the preferences directly,
held near a frozen reference (Rafailov et al. 2023; IPO: Azar et al. 2023).

Letters: B pairs.

The loss at the top is a pure function of summed reply log-probabilities; the Stage below
computes them for the policy (`state.params`) and the reference (`state.frozen`, a copy of
the starting model made at step 0, never updated, under stop_gradient), over the reply
tokens only (lm/stages/pairs.py). With h = (log pi(y_c) - log ref(y_c)) - (log pi(y_r) -
log ref(y_r)):

  sigmoid  -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)   (label smoothing eps)
  ipo      (h - 1 / (2 beta))^2, on log-probs averaged per reply token (as TRL and the paper)
  hinge    max(0, 1 - beta h)

plus, with `dpo.rpo_alpha` (TRL's name; Pang et al. 2024, "Iterative Reasoning Preference
Optimization"), alpha times the chosen reply's negative log-likelihood per token, which keeps
the chosen replies likely while their margin grows (reported as `nll_loss` either way).

Metrics carry TRL's names: rewards/chosen and rewards/rejected (beta times the log-ratio of
each reply), rewards/margins, rewards/accuracies (how often the chosen reply's reward is the
higher), logps/chosen and logps/rejected (the policy's). Start from an SFT or imported model
with `init_from`: it is both the policy's start and the reference.

With LoRA (lm/stages/lora.py) the reference is the base with the adapters off, and no copy is
kept (`frozen_is_start`). With `dpo.precompute_reference=True` no copy is kept either: the
reference scores every pair once before training (lm/stages/reference.py) and the batches
carry its log-probs.
"""

from typing import Any, Callable, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lm.data import pipeline as pipeline_lib
from lm.model import Decoder, ModelConfig
from lm.stages import pairs
from lm.stages import reference as reference_lib

LOSSES = ("sigmoid", "ipo", "hinge")
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
           "logps/chosen", "logps/rejected", "nll_loss")


def dpo_loss(policy_chosen: jax.Array, policy_rejected: jax.Array, reference_chosen: jax.Array,
             reference_rejected: jax.Array, beta: float = 0.1, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(losses [B], chosen rewards [B], rejected rewards [B]) from log-probs [B] of each reply."""
  chosen_ratio = policy_chosen - reference_chosen           # [B]
  rejected_ratio = policy_rejected - reference_rejected     # [B]
  h = chosen_ratio - rejected_ratio
  if loss_type == "sigmoid":
    losses = (-(1.0 - label_smoothing) * jax.nn.log_sigmoid(beta * h)
              - label_smoothing * jax.nn.log_sigmoid(-beta * h))
  elif loss_type == "ipo":
    losses = jnp.square(h - 1.0 / (2.0 * beta))
  elif loss_type == "hinge":
    losses = jax.nn.relu(1.0 - beta * h)
  else:
    raise ValueError(f"dpo.loss={loss_type!r} is not one of {list(LOSSES)}")
  return losses, beta * chosen_ratio, beta * rejected_ratio


def _copy(leaf: Any) -> Any:
  """A separate buffer for an array (the state is donated: the two trees must not share one);
  shapes and shardings pass through."""
  return jnp.copy(leaf) if isinstance(leaf, jax.Array) else leaf


class Stage(pairs.PairStage):
  """DPO: the Decoder, every parameter trained, a frozen copy of the start as the reference."""

  name = "dpo"

  def __init__(self, config: ml_collections.ConfigDict, tokenizer: Any):
    super().__init__(config, tokenizer)
    d = config.dpo
    if d.loss not in LOSSES:
      raise ValueError(f"dpo.loss={d.loss!r} is not one of {list(LOSSES)}")
    if d.beta <= 0:
      raise ValueError(f"dpo.beta={d.beta} must be positive")
    if not 0 <= d.label_smoothing < 0.5:
      raise ValueError(f"dpo.label_smoothing={d.label_smoothing} must be in [0, 0.5)")
    if d.label_smoothing and d.loss != "sigmoid":
      raise ValueError(f"dpo.label_smoothing={d.label_smoothing} applies to dpo.loss='sigmoid' "
                       f"only, not {d.loss!r}")
    if not config.init_from:
      logging.warning("stage='dpo' without init_from: the reference is a random model")
    if d.rpo_alpha < 0:
      raise ValueError(f"dpo.rpo_alpha={d.rpo_alpha} must be >= 0 (0: off)")
    self.loss_type, self.beta, self.label_smoothing = d.loss, d.beta, d.label_smoothing
    self.rpo_alpha = d.rpo_alpha
    self.precompute = d.precompute_reference
    # The frozen tree is the model at its start, read like `params` (LoRA: the adapters off).
    self.frozen_is_start = not self.precompute
    self.tables: dict[str, np.ndarray] = {}   # precomputed: split -> reference log-probs [N, 2]
    self.metric_weights = {"loss": "weight", **{name: "weight" for name in METRICS}}

  def make_model(self, model_config: ModelConfig) -> Decoder:
    return Decoder(model_config)

  def partition(self, params: Any) -> tuple[Any, Any]:
    if self.precompute:
      return params, None
    return params, jax.tree.map(_copy, params)

  def _summed_logps(self, apply: Callable, params: Any, batch: pairs.Batch) -> jax.Array:
    """[2B] summed reply log-probs, chosen rows then rejected rows: one forward pass."""
    nll, _ = apply(params, pairs.both_sides(batch, "inputs"),
                   targets=pairs.both_sides(batch, "targets"))              # [2B, T]
    return pairs.reply_logps(nll, pairs.both_sides(batch, "loss_mask"))

  def _per_loss(self, logps: jax.Array, batch: pairs.Batch) -> tuple[jax.Array, jax.Array]:
    """(chosen, rejected) [B] as the loss reads them: IPO's averaged per reply token."""
    if self.loss_type == "ipo":
      logps = logps / jnp.maximum(jnp.sum(pairs.both_sides(batch, "loss_mask"), axis=-1), 1.0)
    return tuple(jnp.split(logps, 2))

  def _reference_logps(self, apply: Callable, params: Any, batch: pairs.Batch) -> jax.Array:
    """[B, 2] summed (chosen, rejected) log-probs: what the precomputed tables hold."""
    return jnp.stack(jnp.split(self._summed_logps(apply, params, batch), 2), axis=-1)

  def _reference(self, apply: Callable, frozen: Any, batch: pairs.Batch
                 ) -> tuple[jax.Array, jax.Array]:
    if "chosen_reference" in batch:  # precomputed (lm/stages/reference.py)
      logps = pairs.both_sides(batch, "reference")
    else:
      logps = self._summed_logps(apply, frozen, batch)
    return jax.lax.stop_gradient(self._per_loss(logps, batch))

  def prepare(self, setup: Any, workdir: str, run: reference_lib.RunAtStart) -> None:
    """With dpo.precompute_reference: the reference log-probs of every pair, read from the
    workdir or computed by the model at its start (before the batches exist)."""
    if not self.precompute:
      return
    splits = {"train": setup.source.train, "eval": setup.source.eval}
    self.tables = reference_lib.load_or_compute(workdir, splits, setup.config, self.row,
                                                setup.rows, run, self._reference_logps)

  def _with_reference(self, records: Sequence, split: str) -> Sequence:
    if not self.precompute:
      return records
    table = self.tables.get(split)
    if table is None or len(table) != len(records):
      raise RuntimeError(f"dpo.precompute_reference: no reference log-probs for these {split} "
                         "records (the loop calls Stage.prepare first)")
    return reference_lib.WithReference(records, table)

  def train_batches(self, records: Sequence, config: ml_collections.ConfigDict, rows: slice,
                    seed: int) -> pipeline_lib.Batches:
    return super().train_batches(self._with_reference(records, "train"), config, rows, seed)

  def eval_set(self, records: Sequence, config: ml_collections.ConfigDict,
               rows: slice) -> pipeline_lib.EvalSet:
    return super().eval_set(self._with_reference(records, "eval"), config, rows)

  def example_batch(self, batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
    batch = pairs.example_batch(batch_size, seq_len)
    if self.precompute:
      batch.update({f"{side}_reference": np.zeros(batch_size, np.float32)
                    for side in pairs.SIDES})
    return batch

  def loss(self, apply: Callable, params: Any, frozen: Any, batch: pairs.Batch):
    policy = self._summed_logps(apply, params, batch)                       # [2B]
    chosen, rejected = self._per_loss(policy, batch)
    ref_chosen, ref_rejected = self._reference(apply, frozen, batch)
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        chosen, rejected, ref_chosen, ref_rejected, self.beta, self.loss_type,
        self.label_smoothing)
    # RPO: the chosen reply's negative log-likelihood per token, keeping it likely.
    nll = -jnp.split(policy, 2)[0] / jnp.maximum(jnp.sum(batch["chosen_loss_mask"], -1), 1.0)
    if self.rpo_alpha:
      losses = losses + self.rpo_alpha * nll
    chosen_rewards, rejected_rewards = (jax.lax.stop_gradient(chosen_rewards),
                                        jax.lax.stop_gradient(rejected_rewards))
    w = batch["weight"]                                    # [B]: 0 on padding rows
    sums = {"weight": jnp.sum(w), "loss": jnp.sum(w * losses),
            "rewards/chosen": jnp.sum(w * chosen_rewards),
            "rewards/rejected": jnp.sum(w * rejected_rewards),
            "rewards/margins": jnp.sum(w * (chosen_rewards - rejected_rewards)),
            "rewards/accuracies": jnp.sum(w * (chosen_rewards > rejected_rewards)),
            "logps/chosen": jnp.sum(w * jax.lax.stop_gradient(chosen)),
            "logps/rejected": jnp.sum(w * jax.lax.stop_gradient(rejected)),
            "nll_loss": jnp.sum(w * jax.lax.stop_gradient(nll))}
    return sums["loss"], sums

  def eval_sums(self, apply: Callable, params: Any, frozen: Any, batch: pairs.Batch
                ) -> dict[str, jax.Array]:
    return self.loss(apply, params, frozen, batch)[1]

  def eval_metrics(self, totals: dict[str, float], eval_set: Any) -> dict[str, float]:
    del eval_set
    weight = max(totals["weight"], 1.0)
    return {f"eval_{name}": totals[name] / weight for name in ("loss", *METRICS)}
