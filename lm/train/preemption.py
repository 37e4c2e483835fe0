"""Stopping cleanly when asked: SIGTERM (a preemption notice) or SIGINT (Ctrl-C).

The loop asks `should_stop(step)` after every step; when it says yes, the loop saves a
checkpoint of that step, flushes its metrics and returns, and `lm train` exits 0, so a
scheduler that reruns the same command resumes exactly there.

One process: the signal handler below sets a flag; a second signal exits at once.
Many processes: every host must save the same step, and JAX's preemption service (started by
`jax.distributed.initialize`) already owns SIGTERM: it tells all hosts of a notice received by
any of them and agrees on a step, which `reached_preemption_sync_point` reports. There, only
that sync point is used (SIGINT keeps its default: a Ctrl-C on one host of many cannot stop
the others at the same step).
"""

import os
import signal
import threading

from absl import logging
import jax
from jax.experimental import multihost_utils


class StopRequest:
  """A context manager that turns SIGTERM / SIGINT into a request to stop at a step boundary."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)
  # The last signal any StopRequest of this process caught, even one too late to stop its run
  # (during the last eval or save): a caller that trains run after run (`lm sweep`) stops too.
  caught_in_process: int | None = None

  def __init__(self):
    self.received: int | None = None
    self._previous: dict[int, object] = {}
    self._multi_host = jax.process_count() > 1

  def __enter__(self) -> "StopRequest":
    if not self._multi_host and threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def _handle(self, signum: int, frame) -> None:
    del frame
    name = signal.Signals(signum).name
    if self.received is not None:  # the second signal: no more waiting
      logging.warning("Second %s: exiting now, without a checkpoint", name)
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)
      return
    self.received = StopRequest.caught_in_process = signum
    logging.warning("%s received: finishing this step, then saving a checkpoint and exiting "
                    "(send it again to exit at once)", name)

  def should_stop(self, step: int) -> bool:
    """Whether to save and stop after `step`; on many hosts, the same answer on every host."""
    if self._multi_host:
      try:
        return multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError:  # the preemption service is off (jax_enable_preemption_service)
        return False
    return self.received is not None
