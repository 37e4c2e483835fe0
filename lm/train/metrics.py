"""What a run reports: metrics.jsonl, TensorBoard events, and one updating progress line.

Only process 0 writes. TensorBoard files come from tensorboardX, so TensorFlow is not needed.
"""

import json
import os
import sys

from absl import logging
from etils import epath

from lm.parallel import accelerators


def peak_flops_per_device(override: float = 0.0) -> float:
  """The MFU denominator: `train.peak_flops` when set, else the local chip's table entry."""
  if override > 0:
    return override
  try:
    return accelerators.local_accelerator().peak_flops
  except ValueError:  # a chip missing from the table: MFU is unknown, training goes on
    return float("nan")


def _records_up_to(path: epath.Path, step: int) -> list[str]:
  if not path.exists():
    return []
  kept = []
  for line in path.read_text().splitlines(keepends=True):
    try:
      record = json.loads(line)
    except json.JSONDecodeError:  # cut short by a kill
      continue
    if line.endswith("\n") and record.get("step", 0) <= step:
      kept.append(line)
  return kept


class MetricsWriter:
  """metrics.jsonl (one object per logged step) and TensorBoard scalars in `workdir`.

  A remote workdir (gs://...) cannot be appended to: there the file is rewritten whole at
  each write, and TensorBoard events go to a local folder instead (tensorboardX writes
  only local files without TensorFlow).
  """

  def __init__(self, workdir: str, enabled: bool = True, start_step: int = 0):
    """`start_step`: the step training resumes from. Records after it (written by a run that
    was killed before its next checkpoint) and a line cut short by the kill are dropped, so
    that metrics.jsonl holds every step once, as an uninterrupted run writes it."""
    self.enabled = enabled
    if not enabled:
      return
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    self.path = epath.Path(workdir) / "metrics.jsonl"
    self.remote = "://" in workdir
    self.lines = _records_up_to(self.path, start_step)
    if not self.remote:
      tmp = self.path.parent / (self.path.name + ".tmp")
      tmp.write_text("".join(self.lines))
      tmp.replace(self.path)
    logdir = workdir
    if self.remote:
      logdir = os.path.join(os.path.expanduser("~/lm_logs/tensorboard"),
                            workdir.split("://", 1)[1].strip("/").replace("/", "_"))
      logging.info("TensorBoard events for %s go to %s", workdir, logdir)
    self.tensorboard = SummaryWriter(logdir=logdir, flush_secs=10)

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    line = json.dumps({"step": int(step), **{k: float(v) for k, v in metrics.items()}}) + "\n"
    if self.remote:
      self.lines.append(line)
      self.path.write_text("".join(self.lines))
    else:
      with self.path.open("a") as f:
        f.write(line)
    for name, value in metrics.items():
      self.tensorboard.add_scalar(name, float(value), int(step))

  def close(self) -> None:
    if self.enabled:
      self.tensorboard.close()


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class ProgressLine:
  """`step 120/600 | loss 2.310 | 41.2k tok/s | MFU 12.1% | ETA 1:53` on one terminal line."""

  def __init__(self, total_steps: int, enabled: bool = True, stream=sys.stdout):
    self.total_steps = total_steps
    self.enabled = enabled
    self.stream = stream
    self.interactive = stream.isatty()

  def update(self, step: int, loss: float, tokens_per_sec: float, mfu: float,
             seconds_per_step: float, extra: str = "") -> None:
    if not self.enabled:
      return
    eta = _duration((self.total_steps - step) * seconds_per_step)
    line = (f"step {step}/{self.total_steps} | loss {loss:.4f} | "
            f"{tokens_per_sec / 1e3:.1f}k tok/s | MFU {100 * mfu:.1f}% | ETA {eta}{extra}")
    if self.interactive:
      self.stream.write("\r\033[K" + line)
    else:
      self.stream.write(line + "\n")
    self.stream.flush()

  def message(self, text: str) -> None:
    """A line of its own (evaluation, checkpoint), keeping the progress line below it."""
    if self.enabled:
      self.stream.write(("\r\033[K" if self.interactive else "") + text + "\n")
      self.stream.flush()

  def close(self) -> None:
    if self.enabled and self.interactive:
      self.stream.write("\n")
      self.stream.flush()
