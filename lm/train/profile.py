"""`train.profile_steps="10:15"`: a JAX profiler trace of steps 10 to 14 in workdir/profile.

The trace (XPlane, one file per host under profile/plugins/profile/<run>/) opens in
TensorBoard's profile plugin (`tensorboard --logdir WORKDIR/profile`) or in Perfetto via
XProf. The range reads like a Python slice, in the loop's step numbers (the state's step
before the update): tracing starts before step `start` is dispatched and stops once step
`stop - 1` has finished on the device, so the trace holds whole steps. Steps after the
first compile, so a range that starts past step 0 shows steady-state steps only.
"""

import os

import jax
from absl import logging


def parse_steps(spec: str) -> tuple[int, int] | None:
  """"A:B" -> (A, B) with 0 <= A < B; "" -> None (no trace)."""
  if not spec:
    return None
  start, sep, stop = spec.partition(":")
  try:
    if not sep:
      raise ValueError
    start_step, stop_step = int(start), int(stop)
  except ValueError:
    raise ValueError(f"train.profile_steps={spec!r} must be 'START:STOP' (e.g. '10:15': steps "
                     "10 to 14), or '' for no trace") from None
  if not 0 <= start_step < stop_step:
    raise ValueError(f"train.profile_steps={spec!r} needs 0 <= START < STOP")
  return start_step, stop_step


class Profiler:
  """Starts and stops the trace around the loop's steps; every process traces its own host."""

  def __init__(self, spec: str, workdir: str):
    self.steps = parse_steps(spec)
    self.directory = os.path.join(workdir, "profile")
    self.active = False

  def before_step(self, step: int) -> None:
    if self.steps and step == self.steps[0]:
      jax.profiler.start_trace(self.directory)
      self.active = True

  def after_step(self, step: int, outputs) -> None:
    """`outputs` of step `step`: waited for before the trace stops, so it holds their work."""
    if self.active and step + 1 == self.steps[1]:
      jax.block_until_ready(outputs)
      self.close()

  def close(self) -> None:
    """Stops a trace still running (the run ended or stopped inside the range)."""
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
      logging.info("Profiler trace of train.profile_steps=%s written to %s", self.steps,
                   self.directory)
