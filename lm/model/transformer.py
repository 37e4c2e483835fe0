"""Decoder: embed -> L pre-norm blocks (nn.scan + remat) -> final norm -> logits.

Letters: B batch, T sequence, D model dim, V vocab.

`Decoder(config).init(key, tokens)` / `.apply(variables, tokens)` return float32 logits
[B, T, V]. Optional `positions` [B, T] (RoPE / learned positions restart per packed
document) and `segment_ids` [B, T] (tokens attend only within their own document).

Decoding: `.apply(variables, tokens, cache=cache)` with a `KVCache` feeds T more tokens of
every row (a whole left-padded prompt, then one token at a time) and returns
`(logits, new_cache)`; positions default to each row's own count of real tokens. Each block
takes its layer's keys and values and returns them updated: unrolled, one array per layer;
under nn.scan, stacked into a scanned input and output. Scanning copies every layer's
weights and cache slice at each step, so the inference engine decodes with unrolled layers.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.model.attention import (CACHE_AXES, Attention, KVCache, attention_kernel,
                                attention_mask, cache_mask, cache_positions, rope_angles)
from lm.model.config import ModelConfig
from lm.model.layers import Embed, Mlp, Norm, param, weight_init
from lm.model.output import chunked_cross_entropy, cross_entropy, output_logits

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
  def __call__(self, x, sin, cos, mask, cache=None, index=None):
    """x: [B, T, D]. Decoding: cache = this layer's (keys, values) and index = the time of
    x's first token; the second output is then the updated (keys, values)."""
    x = nn.with_logical_constraint(x, ACTIVATION_AXES)
    attention = Attention(self.config, name="attention")
    h = Norm(self.config, name="attention_norm")(x)
    if cache is None:
      x = x + attention(h, sin, cos, mask)
    else:
      y, cache = attention(h, sin, cos, mask, cache=(*cache, index))
      x = x + y
    x = x + Mlp(self.config, name="mlp")(Norm(self.config, name="mlp_norm")(x))
    return nn.with_logical_constraint(x, ACTIVATION_AXES), cache


class Decoder(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, positions: jax.Array | None = None,
               segment_ids: jax.Array | None = None, cache: KVCache | None = None,
               last_only: bool = False, targets: jax.Array | None = None,
               hidden: bool = False):
    """Logits [B, T, V] (float32); with a cache, (logits, new_cache). `last_only` keeps the
    logits of the last position alone ([B, 1, V]), all a prefill needs. With `targets`
    [B, T]: (nll, log Z), each [B, T] float32, the token log-probs a loss needs, computed
    `model.loss_chunk` positions at a time when set (lm/model/output.py). `hidden` returns
    the final-norm outputs [B, T, D] instead, a head's input (lm/model/heads.py); the output
    projection is still declared, so the parameter tree stays the language model's."""
    cfg = self.config
    if targets is not None and (cache is not None or last_only):
      raise ValueError("targets are for training and scoring whole rows, not decoding")
    if cache is not None and segment_ids is not None:
      raise ValueError("segment_ids are for packed training rows; decoding with a cache "
                       "masks each row by its cache.start")
    if positions is None and cache is not None:
      positions = cache_positions(cache, tokens.shape[-1])
    elif positions is None:
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
    if cache is None and attention_kernel(cfg, tokens.shape[-1]) == "splash":
      mask = segment_ids  # [B, T] or None: the kernel builds its own masks
    elif segment_ids is not None:
      mask = attention_mask(segment_ids, cfg.sliding_window)  # [B, 1, T, T]
    else:
      mask = None
    if cache is not None:
      mask = cache_mask(cfg, cache, tokens.shape[-1])  # [B, 1, T, S]

    block = Block
    if cfg.remat != "none":
      block = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
    in_axes = (nn.broadcast, nn.broadcast, nn.broadcast)
    layer_caches, extra = [None] * cfg.num_layers, ()
    if cache is not None:
      layer_caches = list(zip(cache.key, cache.value))
      in_axes += (0, nn.broadcast)  # under scan: the stacked caches in and out, the index
    if cfg.scan_layers:
      stack = nn.scan(block, variable_axes={"params": 0},
                      split_rngs={"params": True, "dropout": True},  # LoRA dropout: per layer
                      in_axes=in_axes, length=cfg.num_layers,
                      metadata_params={nn.PARTITION_NAME: "layers"})
      if cache is not None:
        stacked = jax.tree.map(lambda *a: jnp.stack(a), *layer_caches)  # [L, B, K, S, H]
        extra = (stacked, cache.index)
      x, new_stacked = stack(cfg, name="layers")(x, sin, cos, mask, *extra)
      if cache is not None:
        layer_caches = [jax.tree.map(lambda a, i=i: a[i], new_stacked)
                        for i in range(cfg.num_layers)]
    else:
      for i in range(cfg.num_layers):
        extra = () if cache is None else (layer_caches[i], cache.index)
        x, layer_caches[i] = block(cfg, name=f"layers_{i}")(x, sin, cos, mask, *extra)
    if cache is not None:
      constrain = lambda a: nn.with_logical_constraint(a, CACHE_AXES)
      cache = cache.replace(key=tuple(constrain(k) for k, _ in layer_caches),
                            value=tuple(constrain(v) for _, v in layer_caches),
                            index=cache.index + tokens.shape[-1])

    if last_only:
      x = x[:, -1:]
    x = Norm(cfg, name="final_norm")(x)
    if hidden:
      if not cfg.tie_embeddings:
        param(self, "lm_head", (cfg.d_model, cfg.vocab_size), ("embed", "vocab"),
              weight_init(cfg))
      return nn.with_logical_constraint(x, ACTIVATION_AXES)  # [B, T, D]
    if cfg.tie_embeddings:
      w = embed.table.astype(x.dtype).T  # [D, V]
    else:
      w = param(self, "lm_head", (cfg.d_model, cfg.vocab_size), ("embed", "vocab"),
                weight_init(cfg)).astype(x.dtype)  # [D, V]
    if targets is not None and cfg.loss_chunk:
      return chunked_cross_entropy(x, w, targets, cfg.loss_chunk)  # [B, T] each
    logits = output_logits(x, w)  # [B, T, V] float32
    if targets is not None:
      return cross_entropy(logits, targets)
    return logits if cache is None else (logits, cache)
