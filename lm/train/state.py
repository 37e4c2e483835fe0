"""TrainState and its sharded initialisation; parameter and FLOP counts.

Initialisation never materialises an unsharded state: `jax.eval_shape` gives the shapes
and logical axes, the rules turn them into shardings, and `jax.jit(init, out_shardings=...)`
creates every array directly on its devices (flax lm1b's `setup_initial_state`).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh

from lm.model import Decoder, ModelConfig
from lm.parallel import rules as rules_lib
from lm.train import guard as guard_lib


class TrainState(struct.PyTreeNode):
  step: jax.Array   # scalar int32: steps taken (updates applied or refused by the guard)
  params: Any       # float32 parameter tree (unboxed)
  opt_state: Any    # optax state, sharded like the parameters
  guard: guard_lib.Guard  # replicated scalars: skipped updates, loss statistics (guard.py)


def init_params(model: Decoder, key: jax.Array) -> Any:
  """Boxed parameters (each leaf carries its logical axis names)."""
  return model.init(key, jnp.zeros((1, 8), jnp.int32))["params"]


def abstract_boxed_params(model: Decoder) -> Any:
  return jax.eval_shape(lambda: init_params(model, jax.random.key(0)))


def state_shardings(model: Decoder, tx: optax.GradientTransformation, mesh: Mesh,
                    rules: rules_lib.Rules) -> tuple[TrainState, TrainState]:
  """(abstract state, shardings): optimizer leaves shaped like a parameter get its sharding."""
  boxed = abstract_boxed_params(model)
  params = nn.unbox(boxed)
  param_shardings = rules_lib.logical_shardings(boxed, mesh, rules)
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
                        opt_state=opt_state, guard=guard)
  shardings = TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings,
                         guard=jax.tree.map(lambda _: replicated, guard))
  return abstract, shardings


def create_train_state(model: Decoder, tx: optax.GradientTransformation, key: jax.Array,
                       shardings: TrainState) -> TrainState:
  def init(key):
    params = nn.unbox(init_params(model, key))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      guard=guard_lib.init())
  return jax.jit(init, out_shardings=shardings)(key)


def train_state_from_params(tx: optax.GradientTransformation, params: Any,
                            shardings: TrainState) -> TrainState:
  """Step 0 with given (already sharded) parameters, e.g. imported ones; fresh optimizer."""
  def init(params):
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      guard=guard_lib.init())
  return jax.jit(init, in_shardings=(shardings.params,), out_shardings=shardings)(params)


def count_params(params: Any) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))


def count_bytes(tree: Any) -> int:
  """Bytes of every array in `tree` (abstract or real): what a checkpoint of it holds."""
  return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def flops_per_token(config: ModelConfig, seq_len: int) -> float:
  """Training FLOPs per token: 6 per matmul weight, plus attention scores (PaLM, App. B)."""
  d, v, h = config.d_model, config.vocab_size, config.resolved_head_dim
  per_layer = (d * h * (2 * config.num_heads + 2 * config.num_kv_heads)
               + (2 if config.mlp == "gelu" else 3) * d * config.d_ff)
  matmul_weights = config.num_layers * per_layer + d * v  # the output projection
  attention = 12 * config.num_layers * config.num_heads * h * seq_len
  return 6.0 * matmul_weights + attention
