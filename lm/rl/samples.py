"""workdir/samples.jsonl: a few completions with their rewards every `rl.samples_every`
steps, one JSON object a line, each with its "step", for reading what a policy writes.

    log = SamplesLog(workdir, first_step)   # once per process, at the run's first step
    log.write(step, [{"prompt": ..., "completion": ..., "reward": ...}, ...])

A run killed after its last checkpoint has written the samples of the steps it went on to;
resumed from that checkpoint, it replays those steps (the same rollouts) and would write
them again. So the log, opened with the step of the first samples this process may write
(the stage's label for its first step: GRPO labels samples by the step that trains on them,
PPO by the step count after its iteration), first drops every line of that step or later:
each step's samples then appear once, as in an uninterrupted run. Only process 0 writes.
"""

import json

from etils import epath
import jax

FILENAME = "samples.jsonl"


class SamplesLog:
  """The samples file of a run whose first samples are labelled `first_step` (see the module
  docstring)."""

  def __init__(self, workdir: str, first_step: int):
    self.path = epath.Path(workdir) / FILENAME
    self.enabled = jax.process_index() == 0
    if self.enabled and self.path.exists():
      kept = [line for line in self.path.read_text().splitlines(keepends=True)
              if line.endswith("\n") and json.loads(line)["step"] < first_step]
      tmp = self.path.parent / (self.path.name + ".tmp")  # a kill now leaves the old file
      tmp.write_text("".join(kept))  # a line cut short by the kill goes too
      tmp.replace(self.path)

  def write(self, step: int, samples: list[dict]) -> None:
    if not self.enabled or not samples:
      return
    with self.path.open("a") as f:
      f.write("".join(json.dumps({"step": step, **s}) + "\n" for s in samples))
