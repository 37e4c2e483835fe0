"""Rollouts from the training state: completions sampled inside jit from the parameters the
optimizer is updating, on the training mesh, with no host round trip of the weights.

Letters: B completions, P prompt columns (`rl.max_prompt_len`), N completion columns
(`rl.max_new_tokens`), T = P + N - 1 training columns, V vocab.

    rollout = generate(model_config, settings, params, prompts, start, key)   # jittable
    rows = training_rows(rollout)             # inputs / targets / positions / segment ids
    logps = completion_logprobs(apply, params, rows, rollout.prompt_len)      # [B, N]

The decoding is the inference engine's own (lm/infer/engine.py: `_prefill` fills a KV cache
from the left-padded prompts and samples each row's first token, `_decode` runs a
`lax.while_loop` until every row has stopped), called on the train state's parameters:

  layout="scanned"   the parameters as they sit in the state, stacked [L, ...] under
                     nn.scan; no copy, but every decoded token slices each layer's weights
                     and cache out of the stacks
  layout="unrolled"  the stacks are cut into one tree per layer inside the jitted rollout
                     (a transient second copy of the weights, freed when it returns), then
                     decoded as the engine decodes

Both give the same tokens; experiments/rl/README.md measures them (unrolled: twice the
tokens/s at d512, 8 layers; `rl.rollout_layout` defaults to it). Row i samples with its
own seed, drawn from the `key` the caller derives from the train state (the stages fold the
step into `config.seed`), so a resumed run samples the same completions.

A row is its prompt, left-padded to P columns, then its completion, N columns with zeros
after the end. For training the same row is shifted by one (inputs, targets) with positions
counting from the prompt's first real token and segment id 0 on the padding, so a training
forward pass sees exactly what the cached decoding saw; the log-probs of the completion
tokens are columns P - 1 ... P + N - 2 of the shifted row.
"""

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.experimental import multihost_utils

from lm.infer import engine as engine_lib
from lm.model import Decoder, ModelConfig
from lm.model.attention import cache_slots

LAYOUTS = ("scanned", "unrolled")
REASONS = engine_lib.REASONS  # why a completion ended: 1 end_turn, 2 max_tokens


@dataclasses.dataclass(frozen=True)
class Settings:
  """What every rollout of a run shares (static under jit)."""
  max_new_tokens: int              # N
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  stop_ids: tuple[int, ...] = ()   # tokens that end a completion (the end-of-turn token)
  layout: str = "scanned"          # see the module docstring


@struct.dataclass
class Rollout:
  tokens: jax.Array    # [B, P + N] int32: prompt left-padded, completion, zeros after it
  start: jax.Array     # [B] int32: column of the prompt's first real token
  logprobs: jax.Array  # [B, N] float32: each sampled token's log-prob under the policy
  length: jax.Array    # [B] int32: completion tokens, the stop token included
  reason: jax.Array    # [B] int32: why it ended (lm/infer/engine.py REASONS)
  prompt_len: int = struct.field(pytree_node=False, default=0)  # P

  @property
  def completions(self) -> jax.Array:
    return self.tokens[:, self.prompt_len:]   # [B, N]

  @property
  def mask(self) -> jax.Array:
    """[B, N] float32: 1 on each completion's tokens."""
    n = self.logprobs.shape[1]
    return (jnp.arange(n)[None, :] < self.length[:, None]).astype(jnp.float32)


def left_pad(prompts: Sequence[Sequence[int]], length: int) -> tuple[np.ndarray, np.ndarray]:
  """(tokens [B, length] int32, start [B] int32): each prompt right-aligned, zeros before."""
  tokens = np.zeros((len(prompts), length), np.int32)
  start = np.zeros(len(prompts), np.int32)
  for i, prompt in enumerate(prompts):
    if not 0 < len(prompt) <= length:
      raise ValueError(f"prompt {i} has {len(prompt)} tokens; rl.max_prompt_len={length}")
    tokens[i, length - len(prompt):] = prompt
    start[i] = length - len(prompt)
  return tokens, start


def decoding_model(model_config: ModelConfig, layout: str) -> Decoder:
  """The Decoder that decodes: no remat (nothing is differentiated), layers scanned as the
  train state holds them ("scanned") or unrolled."""
  if layout not in LAYOUTS:
    raise ValueError(f"rl.rollout_layout={layout!r} is not one of {list(LAYOUTS)}")
  scanned = model_config.scan_layers and layout == "scanned"
  return Decoder(model_config.replace(remat="none", scan_layers=scanned))


def unrolled_params(params: Any, num_layers: int) -> Any:
  """Scanned parameters ("layers": [L, ...] stacks) as layers_0 ... layers_{L-1}."""
  if "layers" not in params:
    return params
  out = {k: v for k, v in params.items() if k != "layers"}
  for i in range(num_layers):
    out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], params["layers"])
  return out


def generate(model_config: ModelConfig, settings: Settings, params: Any, prompts: jax.Array,
             start: jax.Array, key: jax.Array) -> Rollout:
  """One completion per row of prompts [B, P] (left-padded from start [B]), sampled from
  `params` (the Decoder's, scanned or not) with per-row seeds drawn from `key`. Pure: call
  it under jit, inside the mesh and logical-axis rules the parameters are laid out by."""
  model = decoding_model(model_config, settings.layout)
  params = nn.unbox(params)
  if not model.config.scan_layers:
    params = unrolled_params(params, model_config.num_layers)
  batch, prompt_len = prompts.shape
  n = settings.max_new_tokens
  vocab = model_config.vocab_size
  stop_ids = jnp.zeros((vocab,), bool)
  if settings.stop_ids:
    stop_ids = stop_ids.at[jnp.asarray(settings.stop_ids)].set(True)
  rows = engine_lib.Rows(
      max_new=jnp.full((batch,), n, jnp.int32),
      temperature=jnp.full((batch,), settings.temperature, jnp.float32),
      top_k=jnp.full((batch,), settings.top_k, jnp.int32),
      top_p=jnp.full((batch,), settings.top_p, jnp.float32),
      seed=jax.random.bits(key, (batch,), jnp.uint32),
      stop_sequences=jnp.full((batch, 0, 1), engine_lib._NEVER, jnp.int32),  # pylint: disable=protected-access
      stop_ids=stop_ids)
  statics = dict(filtered=settings.top_k > 0 or settings.top_p < 1,
                 greedy_only=settings.temperature == 0)
  # pylint: disable=protected-access
  state = engine_lib._prefill(model, params, prompts, start, rows,
                              slots=cache_slots(model.config, prompt_len + n), columns=n,
                              **statics)
  state = engine_lib._decode(model, params, state, rows, jnp.int32(n), **statics)
  return Rollout(tokens=jnp.concatenate([prompts, state.tokens], axis=1), start=start,
                 logprobs=state.logprobs, length=state.length, reason=state.reason,
                 prompt_len=prompt_len)


def training_rows(rollout: Rollout) -> dict[str, jax.Array]:
  """The rollout's rows as a training forward pass reads them, each [B, T]: inputs, targets,
  positions (from the prompt's first real token) and segment_ids (0 on the left padding)."""
  tokens = rollout.tokens
  t = jnp.arange(tokens.shape[1] - 1)[None, :]                          # [1, T]
  start = rollout.start[:, None]
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
          "positions": jnp.maximum(t - start, 0).astype(jnp.int32),
          "segment_ids": (t >= start).astype(jnp.int32)}


def completion_logits(apply: Callable, params: Any, rows: dict[str, jax.Array],
                      prompt_len: int, temperature: float = 1.0) -> jax.Array:
  """Logits [B, N, V] (float32) that predict each completion token under `params`, divided by
  the sampling temperature: the distribution the completions were drawn from (TRL's GRPO)."""
  logits = apply(params, rows["inputs"], positions=rows["positions"],
                 segment_ids=rows["segment_ids"])                        # [B, T, V]
  return logits[:, prompt_len - 1:].astype(jnp.float32) / temperature


def logprobs_of(logits: jax.Array, tokens: jax.Array) -> jax.Array:
  """log softmax(logits)[token]: [B, N] from logits [B, N, V] and tokens [B, N]."""
  chosen = jnp.take_along_axis(logits, tokens[..., None], axis=-1)[..., 0]
  return chosen - jax.nn.logsumexp(logits, axis=-1)


def completion_logprobs(apply: Callable, params: Any, rows: dict[str, jax.Array],
                        prompt_len: int, temperature: float = 1.0) -> jax.Array:
  """log p(completion token | prompt, earlier tokens) under `params` at `temperature`:
  [B, N], by a training forward pass (`apply(params, tokens, **kwargs)` as the loop's loss
  functions get it)."""
  logits = completion_logits(apply, params, rows, prompt_len, temperature)
  return logprobs_of(logits, rows["targets"][:, prompt_len - 1:])


def to_host(tree: Any) -> Any:
  """Every row of the arrays in `tree` as numpy, gathered from all processes."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


def completion_texts(tokenizer: Any, tokens: np.ndarray, length: np.ndarray,
                     reason: np.ndarray) -> list[str]:
  """Each completion's text: its tokens without the stop token that ended it."""
  out = []
  for row, n, why in zip(tokens, length, reason):
    n = int(n) - (REASONS.get(int(why)) == "end_turn")
    out.append(tokenizer.decode([int(t) for t in row[:n]]))
  return out
