"""Building blocks shared by every family: parameters with logical axes, norms, embeddings, MLPs.

Letters: B batch, T sequence, D model dim, F ffn dim, V vocab.

Parameters are created in float32 and cast to the compute dtype at use, so optimizer
updates stay exact while matmuls run in bfloat16 on accelerators.
"""

import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.model.config import ModelConfig

Initializer = Callable[..., jax.Array]


def param(module: nn.Module, name: str, shape: Sequence[int], axes: Sequence[str | None],
          init: Initializer) -> jax.Array:
  """A float32 parameter annotated with logical axis names (mapped to mesh axes elsewhere)."""
  return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape),
                      jnp.float32)


def token_matmul(x: jax.Array, w: jax.Array, contract: int = 1) -> jax.Array:
  """x [*tokens, *in] times w [*in, *out] -> [*tokens, *out]; `in` is w's first `contract` axes.

  Tokens are flattened to one axis ([B*T, *in]), so that the weight gradient contracts one
  axis: with two (B, T), XLA:CPU writes a transposed copy of each [B, T, F] activation gradient
  first (27% of the quickstart step; benchmarks/README.md). The weight keeps its shape: a
  reshaped copy would be one more residual for autodiff to save. Flattening merges the
  sharded batch axis with the unsharded length inside it, which keeps every sharding. Callers
  that feed one input to several matmuls flatten it once themselves ([B*T, D]), so that
  autodiff saves it once."""
  tokens = x.shape[:x.ndim - contract]
  y = jnp.tensordot(x.reshape(math.prod(tokens), *w.shape[:contract]), w, axes=contract)
  return y.reshape(*tokens, *w.shape[contract:])


def weight_init(config: ModelConfig, scale: float = 1.0) -> Initializer:
  return nn.initializers.normal(stddev=config.init_std * scale)


class Norm(nn.Module):
  """RMSNorm (Llama, Gemma with `1 + scale`) or LayerNorm (GPT-2), computed in float32."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    d = x.shape[-1]
    x32 = x.astype(jnp.float32)
    if cfg.norm == "layernorm":
      x32 = x32 - jnp.mean(x32, axis=-1, keepdims=True)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + cfg.norm_eps)
    scale_init = nn.initializers.zeros if cfg.norm_plus_one else nn.initializers.ones
    scale = param(self, "scale", (d,), ("norm",), scale_init)
    if cfg.norm_plus_one:
      scale = 1.0 + scale
    y = x32 * scale
    if cfg.use_bias:
      y = y + param(self, "bias", (d,), ("norm",), nn.initializers.zeros)
    return y.astype(x.dtype)


class Embed(nn.Module):
  """Token embedding table; `attend` reuses it as the output projection when tied."""
  config: ModelConfig

  def setup(self):
    cfg = self.config
    self.table = param(self, "embedding", (cfg.vocab_size, cfg.d_model), ("vocab", "embed"),
                       weight_init(cfg))

  def __call__(self, tokens: jax.Array) -> jax.Array:
    cfg = self.config
    x = jnp.take(self.table, tokens, axis=0).astype(cfg.compute_dtype)  # [B, T, D]
    if cfg.scale_embeddings:
      x = x * jnp.asarray(cfg.d_model ** 0.5, cfg.compute_dtype)
    return x

  def attend(self, x: jax.Array) -> jax.Array:
    return token_matmul(x, self.table.astype(x.dtype).T)  # [B, T, V]


class Mlp(nn.Module):
  """SwiGLU (Llama), GeGLU (Gemma) or a plain GELU MLP (GPT-2)."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # x: [B, T, D]
    cfg = self.config
    dt = cfg.compute_dtype
    out_init = weight_init(cfg, (2 * cfg.num_layers) ** -0.5)

    def project(name: str, shape, axes, init, bias_axes, inputs):
      w = param(self, name, shape, axes, init).astype(dt)
      y = token_matmul(inputs, w)
      if cfg.use_bias:
        y = y + param(self, name + "_bias", shape[-1:], bias_axes,
                      nn.initializers.zeros).astype(dt)
      return y

    tokens = x.reshape(-1, cfg.d_model)  # [B*T, D], once: up and gate share one saved input
    up = project("wi_up", (cfg.d_model, cfg.d_ff), ("embed", "mlp"), weight_init(cfg), ("mlp",),
                 tokens)  # [B*T, F]
    if cfg.mlp == "gelu":
      hidden = nn.gelu(up, approximate=True)
    else:
      gate = project("wi_gate", (cfg.d_model, cfg.d_ff), ("embed", "mlp"), weight_init(cfg),
                     ("mlp",), tokens)
      activation = nn.silu if cfg.mlp == "swiglu" else (lambda g: nn.gelu(g, approximate=True))
      hidden = activation(gate) * up
    hidden = hidden.reshape(*x.shape[:2], cfg.d_ff)  # [B, T, F]
    hidden = nn.with_logical_constraint(hidden, ("act_batch", "act_len", "act_mlp"))
    return project("wo", (cfg.d_ff, cfg.d_model), ("mlp", "embed"), out_init, ("embed",),
                   hidden)
