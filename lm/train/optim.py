"""Optimizers and learning-rate schedules (config section `train`)."""

import jax
import optax


def learning_rate_schedule(train_config) -> optax.Schedule:
  """Linear warmup from 0 to `lr`, then cosine decay to `lr * min_lr_ratio` at `steps`."""
  warmup = min(train_config.warmup_steps, train_config.steps)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train_config.lr, warmup_steps=warmup,
      decay_steps=max(train_config.steps, warmup + 1),
      end_value=train_config.lr * train_config.min_lr_ratio)


def _decay_mask(params):
  """Weight decay on matrices only: norms scales and biases are left alone."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(train_config) -> optax.GradientTransformation:
  schedule = learning_rate_schedule(train_config)
  name = train_config.optimizer
  if name == "adamw":
    core = optax.adamw(schedule, b1=train_config.b1, b2=train_config.b2, eps=train_config.eps,
                       weight_decay=train_config.weight_decay, mask=_decay_mask)
  elif name == "adafactor":
    core = optax.adafactor(schedule, weight_decay_rate=train_config.weight_decay or None,
                           weight_decay_mask=_decay_mask)
  else:
    raise ValueError(f"train.optimizer={name!r} is not one of ['adamw', 'adafactor']")
  if train_config.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(train_config.grad_clip), core)
  return core
