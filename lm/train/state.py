"""TrainState and its sharded initialisation; parameter and FLOP counts.

Initialisation never materialises an unsharded state: `jax.eval_shape` gives the shapes
and logical axes, the rules turn them into shardings, and `jax.jit(init, out_shardings=...)`
creates every array directly on its devices (flax lm1b's `setup_initial_state`).

A stage's `partition` (lm/train/stage.py) splits the model's parameter tree into the
trainable `params`, which the optimizer sees, and the `frozen` tree beside them (None for
stages that train everything); it is applied to the shardings too, so both trees are laid out
by the same logical-axis rules. The frozen tree may be stored in a narrower float
(`model.frozen_dtype`, e.g. bfloat16: half the bytes of a reference model or a LoRA base);
the trainable parameters and the optimizer state stay float32.
"""

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh

from lm.model import ModelConfig
from lm.model import quant
from lm.parallel import rules as rules_lib
from lm.train import guard as guard_lib


class TrainState(struct.PyTreeNode):
  step: jax.Array   # scalar int32: steps taken (updates applied or refused by the guard)
  params: Any       # float32 parameter tree (unboxed)
  opt_state: Any    # optax state, sharded like the parameters
  guard: guard_lib.Guard  # replicated scalars: skipped updates, loss statistics (guard.py)
  frozen: Any = None  # parameters the stage reads but never updates (or None), stored in
                      # model.frozen_dtype (a QLoRA base's codes and scales as they are)


Partition = Callable[[Any], tuple[Any, Any]]  # params -> (trainable, frozen)


def train_everything(params: Any) -> tuple[Any, None]:
  return params, None


def store_as(tree: Any, dtype: str) -> Any:
  """`tree` with every float32 array (concrete or abstract) stored in `dtype`: the storage
  of parameters that are only read (a stage's frozen tree, the inference engine's copy). The
  model casts every parameter to its compute dtype where it uses it, so only the stored
  precision changes. Quantized weights (QLoRA) keep their codes and float32 scales."""
  dtype = jnp.dtype(dtype)
  if tree is None or dtype == jnp.float32:
    return tree

  def store(x):
    if isinstance(x, quant.Quantized) or getattr(x, "dtype", None) != jnp.float32:
      return x
    if isinstance(x, jax.ShapeDtypeStruct):
      return jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding)
    return x.astype(dtype)

  return jax.tree.map(store, tree, is_leaf=lambda x: isinstance(x, quant.Quantized))


def init_params(model: nn.Module, key: jax.Array) -> Any:
  """Boxed parameters (each leaf carries its logical axis names)."""
  return model.init(key, jnp.zeros((1, 8), jnp.int32))["params"]


def abstract_boxed_params(model: nn.Module) -> Any:
  return jax.eval_shape(lambda: init_params(model, jax.random.key(0)))


def abstract_params_and_shardings(model: nn.Module, mesh: Mesh, rules: rules_lib.Rules
                                  ) -> tuple[Any, Any]:
  """(abstract parameter tree, its shardings) of the whole model, before any partition."""
  boxed = abstract_boxed_params(model)
  return nn.unbox(boxed), rules_lib.logical_shardings(boxed, mesh, rules)


def state_shardings(model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh,
                    rules: rules_lib.Rules, partition: Partition = train_everything,
                    frozen_dtype: str = "float32") -> tuple[TrainState, TrainState]:
  """(abstract state, shardings): optimizer leaves shaped like a parameter get its sharding;
  the frozen tree stored in `frozen_dtype`."""
  all_params, all_shardings = abstract_params_and_shardings(model, mesh, rules)
  params, frozen = partition(all_params)
  frozen = store_as(frozen, frozen_dtype)
  param_shardings, frozen_shardings = partition(all_shardings)
  opt_state = jax.eval_shape(tx.init, params)
  replicated = rules_lib.replicated(mesh)
  def leaf_sharding(leaf, sharding, param):
    if isinstance(leaf, optax.MaskedNode):  # a leaf another part of a partition owns
      return leaf
    return sharding if leaf.shape == param.shape else replicated

  opt_shardings = optax.tree_map_params(
      tx, leaf_sharding, opt_state, param_shardings, params,
      transform_non_params=lambda _: replicated,
      is_leaf=lambda x: isinstance(x, optax.MaskedNode))
  guard = jax.eval_shape(guard_lib.init)
  abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                        opt_state=opt_state, guard=guard, frozen=frozen)
  shardings = TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings,
                         guard=jax.tree.map(lambda _: replicated, guard),
                         frozen=frozen_shardings)
  return abstract, shardings


def _state_at_step_0(tx: optax.GradientTransformation, params: Any,
                     partition: Partition, frozen_dtype: str) -> TrainState:
  trainable, frozen = partition(params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=trainable,
                    opt_state=tx.init(trainable), guard=guard_lib.init(),
                    frozen=store_as(frozen, frozen_dtype))


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, key: jax.Array,
                       shardings: TrainState, partition: Partition = train_everything,
                       frozen_dtype: str = "float32") -> TrainState:
  def init(key):
    return _state_at_step_0(tx, nn.unbox(init_params(model, key)), partition, frozen_dtype)
  return jax.jit(init, out_shardings=shardings)(key)


def train_state_from_params(tx: optax.GradientTransformation, params: Any,
                            shardings: TrainState, partition: Partition = train_everything,
                            frozen_dtype: str = "float32") -> TrainState:
  """Step 0 from the model's whole parameter tree (already sharded), e.g. imported
  parameters; fresh optimizer."""
  param_shardings = jax.tree.map(lambda x: x.sharding, params)
  return jax.jit(lambda p: _state_at_step_0(tx, p, partition, frozen_dtype),
                 in_shardings=(param_shardings,), out_shardings=shardings)(params)


def _flat(tree: Any) -> dict:
  return flax.traverse_util.flatten_dict(tree, sep="/")


def subtree(tree: Any, like: Any) -> Any:
  """The leaves of `tree` at the paths `like` has (nested dicts)."""
  flat = _flat(tree)
  return flax.traverse_util.unflatten_dict({k: flat[k] for k in _flat(like)}, sep="/")


def params_with(model: nn.Module, key: jax.Array, loaded: Any, shardings: Any) -> Any:
  """The model's whole parameter tree: `loaded` (imported parameters, already sharded) where it
  has a leaf, a fresh initialisation elsewhere (adapters, a new head). Inside one jit, the
  fresh leaves that `loaded` replaces are never computed."""
  loaded_shardings = jax.tree.map(lambda x: x.sharding, loaded)
  def init(loaded):
    fresh = _flat(nn.unbox(init_params(model, key)))
    return flax.traverse_util.unflatten_dict({**fresh, **_flat(loaded)}, sep="/")
  # A leaf `loaded` holds in another form (quantized) keeps its own placement.
  out = flax.traverse_util.unflatten_dict({**_flat(shardings), **_flat(loaded_shardings)},
                                          sep="/")
  return jax.jit(init, in_shardings=(loaded_shardings,), out_shardings=out)(loaded)


def count_params(params: Any) -> int:
  """Parameters in `params`; a quantized weight (QLoRA's base) counts the values it stands
  for, not its codes."""
  leaves = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, quant.Quantized))
  return sum(quant.num_values(x) if isinstance(x, quant.Quantized) else int(x.size)
             for x in leaves)


def count_bytes(tree: Any) -> int:
  """Bytes of every array in `tree` (abstract or real): what a checkpoint of it holds."""
  return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def flops_per_token(config: ModelConfig, seq_len: int) -> float:
  """Training FLOPs per token by MaxText's convention, the one MFU is read by everywhere in
  lm (the loop's progress line, `lm plan`, benchmarks/): 6 per matmul weight (forward 2,
  backward 4; the output projection included, the input embedding, a gather, not), plus the
  attention scores and their weighted sum, 12 L N H T, halved because a causal mask leaves
  half of the [T, T] scores unneeded. Recomputation under remat is not counted (work the
  model did not need), nor the masked half XLA's attention computes anyway (README.md,
  "Measuring MFU")."""
  d, v, h = config.d_model, config.vocab_size, config.resolved_head_dim
  per_layer = (d * h * (2 * config.num_heads + 2 * config.num_kv_heads)
               + (2 if config.mlp == "gelu" else 3) * d * config.d_ff)
  matmul_weights = config.num_layers * per_layer + d * v  # the output projection
  attention = 12 * config.num_layers * config.num_heads * h * seq_len / 2  # causal: half
  return 6.0 * matmul_weights + attention
