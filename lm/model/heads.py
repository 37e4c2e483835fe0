"""The decoder with a scalar head: a reward model, and PPO's policy with a value function.

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
from lm.model.output import output_logits
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


class ActorCritic(nn.Module):
  """PPO's policy and value function. The policy is a Decoder under "policy" (a language
  model's tree: init_from and the rollouts read it as it is); the values [B, T] are either a
  scalar head on the policy's final hidden states (`shared`: one forward pass, "value_head"
  and "value_bias" beside "policy") or a separate RewardModel under "value", read at every
  position (its own decoder: twice the parameters, but the value loss cannot disturb the
  policy's features, and it can start from a trained reward model, as TRL's does).

  `apply(variables, tokens, positions, segment_ids)` returns (logits [B, T, V] float32,
  values [B, T] float32)."""
  config: ModelConfig
  shared: bool = False

  @nn.compact
  def __call__(self, tokens: jax.Array, positions: jax.Array | None = None,
               segment_ids: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    cfg = self.config
    policy = Decoder(cfg, name="policy")
    if not self.shared:
      logits = policy(tokens, positions, segment_ids)                          # [B, T, V]
      values = RewardModel(cfg, name="value")(tokens, positions, segment_ids)  # [B, T]
      return logits, values
    x = policy(tokens, positions, segment_ids, hidden=True)                    # [B, T, D]
    # The output projection the Decoder would apply: its embedding table (tied) or lm_head.
    p = nn.unbox(policy.variables["params"])
    w = p["embed"]["embedding"].T if cfg.tie_embeddings else p["lm_head"]      # [D, V]
    logits = output_logits(x, w.astype(x.dtype))                               # [B, T, V]
    head = param(self, "value_head", (cfg.d_model,), ("embed",),
                 nn.initializers.normal(stddev=cfg.d_model ** -0.5 * 0.1))
    bias = param(self, "value_bias", (), (), nn.initializers.zeros)
    return logits, jnp.einsum("BTD,D->BT", x.astype(jnp.float32), head) + bias
