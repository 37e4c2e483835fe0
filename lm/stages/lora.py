"""LoRA on any stage: `lora.rank > 0` wraps the stage `config.stage` names.

The wrapped stage keeps its batches, loss and metrics; the wrapper adapts its model
(lm/model/lora.py), trains the adapters alone and holds the model's other parameters (the
base) frozen, beside the stage's own frozen tree if it has one:
`frozen = {"base": base, "stage": the stage's frozen tree}`. The stage's loss sees an `apply`
that joins the adapters it differentiates with the base, so it is written once for full
training and LoRA alike. A stage whose frozen tree is a copy of the model at its start (DPO's,
GRPO's reference: `frozen_is_start`) keeps no copy: its reference is the base with the adapters off
(zero adapters, which add exactly nothing), as PEFT's `disable_adapter` gives TRL. Dropout
on the adapters' input runs in the training loss alone, which passes the dropout key;
evaluation passes none.
"""

import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lm.model import ModelConfig
from lm.model import lora as lora_lib
from lm.model import quant
from lm.train.stage import Batch, Stage, StageType


def _dropout_key(seed: int, batch: Batch) -> jax.Array:
  """A key fixed by the batch's tokens (so a resumed run drops the same units)."""
  tokens = batch["inputs"].astype(jnp.uint32)
  digest = jnp.sum(tokens * (jnp.arange(tokens.size, dtype=jnp.uint32).reshape(tokens.shape)
                             * jnp.uint32(2654435761) + jnp.uint32(1)))
  return jax.random.fold_in(jax.random.key(seed), digest)


class LoraStage:
  """`inner` with its model adapted: adapters trainable, the base frozen."""

  def __init__(self, inner_type: StageType, config: ml_collections.ConfigDict, tokenizer: Any):
    self.inner: Stage = inner_type(config, tokenizer)
    self.lora = lora_lib.from_config(config.lora)
    self.seed = config.seed
    self.name = self.inner.name
    self.fields = self.inner.fields
    self.metric_weights = self.inner.metric_weights
    self.quantize = config.lora.quantize      # "" | "nf4" | "int8": the frozen base's storage
    if self.quantize not in ("", "nf4", "int8"):
      raise ValueError(f"lora.quantize={self.quantize!r} is not one of ['', 'nf4', 'int8']")
    self.double_quant = config.lora.double_quant
    self._shapes: dict[str, tuple[int, ...]] = {}
    if hasattr(self.inner, "policy_of"):  # RL stages generate from the adapted policy
      self.inner.policy_of = self.policy_of

  def __getattr__(self, name: str):  # batches, metrics, hooks: the inner stage's own
    return getattr(self.inner, name)

  def make_model(self, model_config: ModelConfig):
    model = lora_lib.adapt(self.inner.make_model(model_config), self.lora)
    if self.quantize:  # the weights' shapes, to quantize abstract trees and shardings alike
      abstract = jax.eval_shape(lambda: nn.unbox(model.init(
          jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]))
      self._shapes = {k: v.shape for k, v in
                      flax.traverse_util.flatten_dict(abstract, sep="/").items()}
    return model

  def partition(self, params: Any) -> tuple[Any, Any]:
    trainable, frozen = self.inner.partition(params)
    adapters, base = lora_lib.split(trainable)
    if not adapters:
      raise ValueError(f"lora.targets={self.lora.targets!r} matches no weight of the model "
                       "(paths look like layers/attention/query, layers/mlp/wo, lm_head)")
    if self.quantize:
      base = quant.quantize_tree(base, self._shapes, self.quantize, self.double_quant)
    if self._frozen_is_start:  # the start is the base: the adapters off (`_inner_frozen`)
      frozen = None
    return adapters, ({"base": base} if frozen is None else {"base": base, "stage": frozen})

  @property
  def _frozen_is_start(self) -> bool:
    return getattr(self.inner, "frozen_is_start", False)

  def _inner_frozen(self, params: Any, frozen: Any) -> Any:
    """The frozen tree the inner stage reads: its own, or for a copy of the start, the
    adapters set to zero (the adapted model then computes the base alone, exactly)."""
    if self._frozen_is_start:
      return jax.tree.map(jnp.zeros_like, params)
    return frozen.get("stage")

  def import_leaf(self, path: str, leaf: jax.Array) -> Any:
    """A leaf of the imported base as it is read: QLoRA quantizes each weight matrix there,
    on its devices, so no host holds a float copy of the whole model."""
    if not self.quantize:
      return leaf
    return quant.quantize_placed(path, leaf, self.quantize, self.double_quant)

  def _apply(self, apply: Callable, frozen: Any, rngs: dict | None) -> Callable:
    def adapted(params, tokens, **kwargs):
      if rngs is not None:
        kwargs["rngs"] = rngs
      # QLoRA: the base stays quantized; each weight is dequantized where its layer reads it
      return apply(lora_lib.join(params, frozen["base"]), tokens, **kwargs)
    return adapted

  def policy_of(self, params: Any, frozen: Any) -> tuple[Any, Any]:
    """(policy, reference) as plain model parameters, the adapters folded into the base (an
    RL stage's rollouts decode with them): the reference is the base alone when the stage's
    frozen tree is a copy of the start, else that tree with its adapters folded in."""
    base = quant.dequantize_tree(frozen["base"])
    policy = lora_lib.merge(lora_lib.join(params, base), self.lora)
    if self._frozen_is_start:  # the start: the adapters off, the base alone
      return policy, base
    reference = frozen.get("stage")
    if reference is not None:
      reference = lora_lib.merge(reference, self.lora)
    return policy, reference

  def loss(self, apply: Callable, params: Any, frozen: Any, batch: Batch):
    rngs = {"dropout": _dropout_key(self.seed, batch)} if self.lora.dropout else None
    return self.inner.loss(self._apply(apply, frozen, rngs), params,
                           self._inner_frozen(params, frozen), batch)

  def eval_sums(self, apply: Callable, params: Any, frozen: Any, batch: Batch):
    return self.inner.eval_sums(self._apply(apply, frozen, None), params,
                                self._inner_frozen(params, frozen), batch)


def wrap(stage_type: StageType, config: ml_collections.ConfigDict) -> StageType:
  """`stage_type` itself when `lora.rank` is 0, else it adapted."""
  if lora_lib.from_config(config.lora) is None:
    return stage_type
  return functools.partial(LoraStage, stage_type)
