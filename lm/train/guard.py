"""The update guard: a step with a non-finite loss or gradient, or a loss spike, changes nothing.

Inside the jitted step (lm/train/loop.py) the loss and the gradient norm decide, before the
optimizer runs, whether the update applies; `jax.lax.cond` then either applies it or keeps
the old parameters and moments. A cond rather than a `jnp.where` over the new and old trees:
the select keeps a new and an old copy of the optimizer state alive at once (XLA's memory
analysis of gpt2-124m's step on CPU: +270 MB of temporaries, +27%; the cond: +9 MB).
optax's `apply_if_finite` does the same with a cond but looks at the gradients only (not the
loss, not a spike) and wraps the optimizer state in its own.

A refused update keeps the parameters and the optimizer's moments (its float leaves) as they
were, while `TrainState.step` and the optimizer's integer counters advance: the data, the
learning-rate schedule and Adam's bias correction move on with the step, so the logged `lr`
stays the one applied. Every step reports `skipped` (1.0 or 0.0) and `skipped_updates` (the
total so far, kept in `Guard` in the checkpointed state, so it survives a resume exactly).

`train.on_nonfinite="stop"` freezes the state at the first non-finite step (every later
update is refused too) and records that step in `Guard.first_nonfinite`. The loop reads it
only where it already waits for the device (log, eval and checkpoint steps, the last step),
so there is no device-to-host sync per step; it raises `NonFiniteError` before saving
anything, leaving the newest checkpoint the last one from before the fault.

The loss-spike guard (`train.spike_sigma > 0`) keeps a moving mean and variance of the loss
of applied updates: the exact mean and variance over the first `spike_window` of them, then
an exponential moving average with that horizon. Once `spike_window` updates were applied, a
step whose loss exceeds mean + spike_sigma * std is refused like a non-finite one (in both
modes; only non-finite values stop a run). Refused losses do not enter the statistics, so a
lasting rise of the loss (a new data mix) is refused step after step: the progress line
counts the skipped updates and the loop warns at each log step that follows some.
"""

import jax
import jax.numpy as jnp
from flax import struct


class NonFiniteError(FloatingPointError):
  """A non-finite loss or gradient norm with `train.on_nonfinite="stop"`."""


class Guard(struct.PyTreeNode):
  skipped: jax.Array          # int32: updates refused so far (non-finite or loss spike)
  first_nonfinite: jax.Array  # int32: the first step (as metrics count, from 1) whose loss or
                              # gradient norm was not finite; 0: none
  loss_mean: jax.Array        # float32: moving mean of the loss of applied updates
  loss_var: jax.Array         # float32: moving variance of the same


def init() -> Guard:
  return Guard(skipped=jnp.zeros((), jnp.int32), first_nonfinite=jnp.zeros((), jnp.int32),
               loss_mean=jnp.zeros((), jnp.float32), loss_var=jnp.zeros((), jnp.float32))


def check(guard: Guard, step: jax.Array, loss: jax.Array, grad_norm: jax.Array,
          spike_sigma: float, spike_window: int, stop: bool) -> tuple[jax.Array, Guard]:
  """(apply, new guard) for the update that `step` (0-based, as `TrainState.step`) computed.

  `apply` is a boolean scalar; the guard comes back updated for that decision.
  """
  nonfinite = ~(jnp.isfinite(loss) & jnp.isfinite(grad_norm))
  applied = step - guard.skipped  # updates applied before this one
  apply = ~nonfinite
  if spike_sigma > 0:
    threshold = guard.loss_mean + spike_sigma * jnp.sqrt(guard.loss_var)
    apply &= (applied < spike_window) | (loss <= threshold)
  if stop:  # frozen from the first fault on: the state stays the one before it
    apply &= guard.first_nonfinite == 0
  first_nonfinite = jnp.where((guard.first_nonfinite == 0) & nonfinite, step + 1,
                              guard.first_nonfinite)

  # Welford's update with weight 1/n for the first `spike_window` updates (exact mean and
  # population variance), then 1/spike_window (an exponential moving average). Kept with the
  # spike guard off too, so that turning it on at a resume finds statistics ready.
  alpha = 1.0 / jnp.minimum(applied + 1, spike_window).astype(jnp.float32)
  loss32 = jnp.where(apply, loss, 0.0).astype(jnp.float32)  # a refused loss may be NaN
  delta = loss32 - guard.loss_mean
  mean = guard.loss_mean + alpha * delta
  var = (1.0 - alpha) * (guard.loss_var + alpha * delta * delta)
  return apply, Guard(skipped=guard.skipped + (~apply).astype(jnp.int32),
                      first_nonfinite=first_nonfinite.astype(jnp.int32),
                      loss_mean=jnp.where(apply, mean, guard.loss_mean),
                      loss_var=jnp.where(apply, var, guard.loss_var))


def counters_only(new, old):
  """The optimizer state of a refused update: the counters (integer leaves) of `new`, which
  drive the learning-rate schedule and Adam's bias correction, and the moments of `old`."""
  return jax.tree.map(lambda n, o: n if jnp.issubdtype(n.dtype, jnp.integer) else o, new, old)


def nonfinite_message(step: int, checkpoint: int | None) -> str:
  """What happened, what is left, what to do: the text of `NonFiniteError`."""
  if checkpoint is None:
    kept = "there is no checkpoint yet, so a rerun starts from scratch"
  else:
    kept = (f"the newest checkpoint (step {checkpoint}) is untouched and a rerun in this "
            f"workdir resumes from it")
  return (f"Non-finite loss or gradient norm at step {step} (train.on_nonfinite='stop'); "
          f"{kept}. The same config and data fail the same way again: lower train.lr or raise "
          f"train.warmup_steps, look at the data near step {step}, or set "
          f"train.on_nonfinite='skip' to step over such updates.")
