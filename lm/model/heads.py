"""The decoder with a scalar head: a reward model (or, later, a value model).

Letters: B batch, T sequence, D model dim.

`RewardModel(config).apply(variables, tokens, last=last)` returns one float32 score per row
[B], read at position `last` [B] of each row (the reply's last token: the score has seen the
whole prompt and reply); without `last`, the score of every position [B, T]. The decoder's
parameters sit under "decoder", exactly the language model's tree (so an SFT or imported
checkpoint fills it), and the head beside them: a [D] vector and a bias.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.model.config import ModelConfig
from lm.model.layers import param
from lm.model.transformer import Decoder


class RewardModel(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, positions: jax.Array | None = None,
               segment_ids: jax.Array | None = None, last: jax.Array | None = None
               ) -> jax.Array:
    cfg = self.config
    x = Decoder(cfg, name="decoder")(tokens, positions, segment_ids, hidden=True)  # [B, T, D]
    # A fresh head starts near zero, so the first rewards are those of no preference.
    w = param(self, "reward_head", (cfg.d_model,), ("embed",),
              nn.initializers.normal(stddev=cfg.d_model ** -0.5 * 0.1))
    b = param(self, "reward_bias", (), (), nn.initializers.zeros)
    scores = jnp.einsum("BTD,D->BT", x.astype(jnp.float32), w) + b   # [B, T]
    if last is None:
      return scores
    return jnp.take_along_axis(scores, last[:, None].astype(jnp.int32), axis=1)[:, 0]  # [B]
