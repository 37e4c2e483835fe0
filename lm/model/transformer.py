"""Decoder: embed -> L pre-norm blocks (nn.scan + remat) -> final norm -> logits.

Letters: B batch, T sequence, D model dim, V vocab.

`Decoder(config).init(key, tokens)` / `.apply(variables, tokens)` return float32 logits
[B, T, V]. Optional `positions` [B, T] (RoPE / learned positions restart per packed
document) and `segment_ids` [B, T] (tokens attend only within their own document).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.model.attention import Attention, attention_mask, rope_angles
from lm.model.config import ModelConfig
from lm.model.layers import Embed, Mlp, Norm, param, weight_init

ACTIVATION_AXES = ("act_batch", "act_len", "act_embed")

REMAT_POLICIES = {
    "full": None,  # save nothing; recompute the whole block
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Block(nn.Module):
  """Pre-norm residual block; the call signature fits nn.scan (carry, broadcast inputs)."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x, sin, cos, mask):  # x: [B, T, D]
    x = nn.with_logical_constraint(x, ACTIVATION_AXES)
    x = x + Attention(self.config, name="attention")(Norm(self.config, name="attention_norm")(x),
                                                     sin, cos, mask)
    x = x + Mlp(self.config, name="mlp")(Norm(self.config, name="mlp_norm")(x))
    return nn.with_logical_constraint(x, ACTIVATION_AXES), None


class Decoder(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, positions: jax.Array | None = None,
               segment_ids: jax.Array | None = None) -> jax.Array:
    cfg = self.config
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[-1]), tokens.shape)  # [B, T]
    embed = Embed(cfg, name="embed")
    x = embed(tokens)  # [B, T, D]
    if cfg.positions == "learned":
      table = param(self, "position_embedding", (cfg.max_seq_len, cfg.d_model),
                    (None, "embed"), weight_init(cfg))
      x = x + jnp.take(table, positions, axis=0).astype(x.dtype)
      sin = cos = None
    else:
      sin, cos = rope_angles(cfg, positions)  # [B, T, H/2]
    mask = None if segment_ids is None else attention_mask(segment_ids, cfg.sliding_window)

    block = Block
    if cfg.remat != "none":
      block = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=cfg.num_layers,
                      metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = stack(cfg, name="layers")(x, sin, cos, mask)
    else:
      for i in range(cfg.num_layers):
        x, _ = block(cfg, name=f"layers_{i}")(x, sin, cos, mask)

    x = Norm(cfg, name="final_norm")(x)
    if cfg.tie_embeddings:
      logits = embed.attend(x)
    else:
      w = param(self, "lm_head", (cfg.d_model, cfg.vocab_size), ("embed", "vocab"),
                weight_init(cfg))
      logits = jnp.einsum("BTD,DV->BTV", x, w.astype(x.dtype))
    logits = nn.with_logical_constraint(logits, ("act_batch", "act_len", "act_vocab"))
    return logits.astype(jnp.float32)  # [B, T, V]
