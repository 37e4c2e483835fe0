"""Reward model (`stage="reward"`): a scalar head on the decoder learns which reply people (or
a rule, or an AI) prefer, as a Bradley-Terry model (Ouyang et al. 2022; Bai et al. 2022).

Letters: B pairs.

The loss at the top is a pure function of the two rewards; the Stage below reads them at the
last token of each reply, its end-of-turn token (lm/model/heads.py, lm/stages/pairs.py), or
with `reward.read_at="reply_end"` at the token before it (measured no better on the
preference world: configs/reward_tasks.py). With d = r_chosen -
r_rejected - margin and the soft label p = p_chosen (1 when the record has none):

  loss = -p log sigmoid(d) - (1 - p) log sigmoid(-d)  [+ center (r_chosen + r_rejected)^2]

which for p = 1 is -log sigmoid(r_chosen - r_rejected - margin); the centering term (TRL's
center_rewards_coefficient) keeps rewards near zero, where RL reads them best. Metrics:
accuracy (how often r_chosen > r_rejected), margin (mean r_chosen - r_rejected), the mean
rewards of each side, and on held-out pairs also the mean and standard deviation of all
rewards. Start from an SFT or imported model with `init_from`: it fills the decoder; the head
starts fresh. Score replies afterwards with `lm.RewardModel(workdir)` (lm/reward_model.py).
"""

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from lm.data import formats
from lm.model import ModelConfig
from lm.model.heads import RewardModel
from lm.stages import pairs


def bradley_terry_loss(chosen: jax.Array, rejected: jax.Array, margin: jax.Array,
                       p_chosen: jax.Array) -> jax.Array:
  """Losses [B]: the cross-entropy of sigmoid(chosen - rejected - margin) against p_chosen."""
  d = chosen - rejected - margin                                  # [B]
  return -(p_chosen * jax.nn.log_sigmoid(d) + (1.0 - p_chosen) * jax.nn.log_sigmoid(-d))


def rewards(apply: Callable, params: Any, batch: pairs.Batch) -> tuple[jax.Array, jax.Array]:
  """(chosen, rejected) rewards [B]: one forward pass over both sides' rows."""
  scores = apply(params, pairs.both_sides(batch, "inputs"), last=pairs.both_sides(batch, "last"))
  return jnp.split(scores, 2)


class Stage(pairs.PairStage):
  """The Decoder with a scalar head, every parameter trained, the Bradley-Terry loss."""

  name = "reward"
  pretrained_key = "decoder"   # init_from fills the decoder; the head starts fresh

  def __init__(self, config: ml_collections.ConfigDict, tokenizer: Any):
    if config.reward.read_at not in formats.READ_AT:
      raise ValueError(f"reward.read_at={config.reward.read_at!r} is not one of "
                       f"{list(formats.READ_AT)}")
    super().__init__(config, tokenizer, config.reward.read_at)
    if config.reward.center < 0:
      raise ValueError(f"reward.center={config.reward.center} must be >= 0")
    self.center = config.reward.center
    self.metric_weights = {name: "weight" for name in (
        "loss", "accuracy", "margin", "rewards/chosen", "rewards/rejected")}

  def make_model(self, model_config: ModelConfig) -> RewardModel:
    return RewardModel(model_config)

  def partition(self, params: Any) -> tuple[Any, Any]:
    return params, None

  def _sums(self, apply: Callable, params: Any, batch: pairs.Batch) -> dict[str, jax.Array]:
    chosen, rejected = rewards(apply, params, batch)
    losses = bradley_terry_loss(chosen, rejected, batch["margin"], batch["p_chosen"])
    if self.center:
      losses = losses + self.center * jnp.square(chosen + rejected)
    w = batch["weight"]                                    # [B]: 0 on padding rows
    return {"weight": jnp.sum(w), "loss": jnp.sum(w * losses),
            "accuracy": jnp.sum(w * (chosen > rejected)),
            "margin": jnp.sum(w * (chosen - rejected)), "rewards/chosen": jnp.sum(w * chosen),
            "rewards/rejected": jnp.sum(w * rejected),
            "reward_sum": jnp.sum(w * (chosen + rejected)),
            "reward_square_sum": jnp.sum(w * (jnp.square(chosen) + jnp.square(rejected)))}

  def loss(self, apply: Callable, params: Any, frozen: Any, batch: pairs.Batch):
    del frozen
    sums = self._sums(apply, params, batch)
    return sums["loss"], sums

  def eval_sums(self, apply: Callable, params: Any, frozen: Any, batch: pairs.Batch
                ) -> dict[str, jax.Array]:
    del frozen
    return self._sums(apply, params, batch)

  def eval_metrics(self, totals: dict[str, float], eval_set: Any) -> dict[str, float]:
    del eval_set
    weight = max(totals["weight"], 1.0)
    mean = totals["reward_sum"] / (2 * weight)
    variance = max(totals["reward_square_sum"] / (2 * weight) - mean * mean, 0.0)
    return {**{f"eval_{name}": totals[name] / weight for name in self.metric_weights},
            "eval_reward_mean": mean, "eval_reward_std": math.sqrt(variance)}
