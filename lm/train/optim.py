"""Optimizers and learning-rate schedules (config section `train`).

`train.weight_decay` means the same for both optimizers: decoupled decay multiplied by the
learning-rate schedule (AdamW's `lr * wd * param`), on weight matrices and embeddings only.
Whether a leaf decays is read from its name, never from its rank: with `scan_layers=True`
every per-layer leaf carries a leading `[layers]` axis, so a norm scale is 2-D there.
Both optimizers treat each layer of a scanned leaf as its own array, so a scanned model and
the same model unrolled get the same updates.
"""

from typing import Any, Callable

import jax
import optax

# The Decoder's nn.scan module (lm/model/transformer.py): every leaf under it is [layers, ...].
SCANNED_MODULE = "layers"


def learning_rate_schedule(train_config) -> optax.Schedule:
  """Linear warmup from 0 to `lr`, then cosine decay to `lr * min_lr_ratio` at `steps`."""
  warmup = min(train_config.warmup_steps, train_config.steps)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train_config.lr, warmup_steps=warmup,
      decay_steps=max(train_config.steps, warmup + 1),
      end_value=train_config.lr * train_config.min_lr_ratio)


def _keys(path) -> list[str]:
  return [str(getattr(k, "key", getattr(k, "name", k))) for k in path]


def decays(path) -> bool:
  """Weight decay for projections and embeddings; none for norm scales and biases (their
  names: `scale`, `bias`, `<projection>_bias`), whatever the leaf's rank."""
  name = _keys(path)[-1]
  return not (name == "scale" or name == "bias" or name.endswith("_bias"))


def decay_mask(params: Any) -> Any:
  return jax.tree_util.tree_map_with_path(lambda path, _: decays(path), params)


def is_scanned(path) -> bool:
  """A leaf of the scanned block stack: its leading axis is the layer."""
  return SCANNED_MODULE in _keys(path)[:-1]


def _per_layer(inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """`inner` applied to each layer of [layers, ...] leaves on its own (vmap over axis 0)."""
  def init(params):
    if not jax.tree.leaves(params):  # an unrolled model: no scanned leaves
      return inner.init(params)
    return jax.vmap(inner.init)(params)

  def update(updates, state, params=None):
    if not jax.tree.leaves(updates):
      return inner.update(updates, state, params)
    return jax.vmap(inner.update)(updates, state, params)

  return optax.GradientTransformation(init, update)


def _by_layer(inner: Callable[[], optax.GradientTransformation]) -> optax.GradientTransformation:
  """`inner()` on unstacked leaves, and layer by layer on leaves of the scanned stack."""
  def labels(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "scanned" if is_scanned(path) else "single", params)
  return optax.multi_transform({"single": inner(), "scanned": _per_layer(inner())}, labels)


def _adafactor_direction() -> optax.GradientTransformation:
  """optax.adafactor's defaults without learning rate or decay: factored second moments
  (arrays with two dims >= 128), update clipping at block RMS 1, scaled by the parameter's RMS."""
  return optax.chain(optax.scale_by_factored_rms(), optax.clip_by_block_rms(1.0),
                     optax.scale_by_param_block_rms())


def make_optimizer(train_config) -> optax.GradientTransformation:
  schedule = learning_rate_schedule(train_config)
  name = train_config.optimizer
  if name == "adamw":  # elementwise: a scanned leaf needs no special treatment
    direction = optax.scale_by_adam(b1=train_config.b1, b2=train_config.b2,
                                    eps=train_config.eps)
  elif name == "adafactor":
    direction = _by_layer(_adafactor_direction)
  else:
    raise ValueError(f"train.optimizer={name!r} is not one of ['adamw', 'adafactor']")
  core = optax.chain(
      direction,
      optax.add_decayed_weights(train_config.weight_decay, mask=decay_mask),
      optax.scale_by_learning_rate(schedule))  # -lr(step) * (direction + wd * param)
  if train_config.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(train_config.grad_clip), core)
  return core
