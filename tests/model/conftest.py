"""Shared fixtures for the model tests.

Compiling `Decoder.init` costs seconds on CPU (the random-normal kernels dominate), so most
tests take parameter shapes from `jax.eval_shape` and fill them with numpy noise instead.
The noise is larger than the default init (std 0.1, norm scales and biases perturbed too)
so that attention, norms and biases all move the logits by far more than the tolerances the
tests use. The real initialisers are tested on their own.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.model import Decoder
from lm.model.config import ModelConfig


def _param_shapes(cfg: ModelConfig):
  return jax.eval_shape(Decoder(cfg).init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))


@functools.cache
def _random_params(cfg: ModelConfig, seed: int):
  rng = np.random.default_rng(seed)

  def fill(path, shape):
    name = path[-1].key
    noise = rng.standard_normal(shape.shape).astype(np.float32)
    offset = 1.0 if name == "scale" and not cfg.norm_plus_one else 0.0
    return jnp.asarray(offset + 0.1 * noise)

  return jax.tree_util.tree_map_with_path(fill, nn.unbox(_param_shapes(cfg)))


@functools.cache
def _jitted_apply(cfg: ModelConfig):
  model = Decoder(cfg)

  def apply(variables, tokens, positions, segment_ids):
    return model.apply(variables, tokens, positions=positions, segment_ids=segment_ids)

  return jax.jit(apply)


@pytest.fixture(scope="session")
def param_shapes():
  """param_shapes(cfg) -> boxed (nn.LogicallyPartitioned) ShapeDtypeStructs; allocates nothing."""
  return _param_shapes


@pytest.fixture(scope="session")
def random_params():
  """random_params(cfg, seed=0) -> unboxed {'params': ...} with Decoder(cfg)'s shapes."""
  return lambda cfg, seed=0: _random_params(cfg, seed)


@pytest.fixture(scope="session")
def logits_of():
  """logits_of(cfg, params, tokens, positions=None, segment_ids=None) -> numpy float32 logits.

  One jitted function per config, with positions always passed explicitly, so tests that use
  the same config and shapes share one compilation.
  """
  def call(cfg, params, tokens, positions=None, segment_ids=None):
    tokens = jnp.asarray(tokens)
    if positions is None:
      positions = np.broadcast_to(np.arange(tokens.shape[-1]), tokens.shape)
    positions = jnp.asarray(positions)
    if segment_ids is not None:
      segment_ids = jnp.asarray(segment_ids)
    return np.asarray(_jitted_apply(cfg)(params, tokens, positions, segment_ids))
  return call
