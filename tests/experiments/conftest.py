"""The sweep that tests of lm sweep and lm report share: two runs trained for real."""

import os
import signal

import pytest

from lm import stages
from lm.experiments import sweep as sweep_lib
from lm.train.loop import train_and_evaluate


def _stage_stopping_at(config, step_to_stop):
  """The config's real stage, whose between-steps hook sends this process SIGTERM after step
  `step_to_stop`: the loop's preemption handling then saves that step and returns."""
  base = stages.for_config(config)

  class Stopping(base):
    def between_steps(self, state, step):
      if step == step_to_stop:
        os.kill(os.getpid(), signal.SIGTERM)
      return super().between_steps(state, step)

  return Stopping


@pytest.fixture(scope="session")
def swept(tmp_path_factory, make_config):
  """Runs "a" and "b" of one config (6 steps, checkpoints at 3 and 6); "b" is interrupted by a
  SIGTERM after step 3, then the sweep is run again, then a third time. Returns the workdir,
  the runs and the names each call trained."""
  config = make_config(train__checkpoint_every=3)
  workdir = str(tmp_path_factory.mktemp("sweep"))
  runs = sweep_lib.plan(config, [{"label": "a"}, {"label": "b"}], workdir)
  sweep_lib.write_sweep_file(workdir, "s.py", "c.py", runs, {})

  def interrupting(run_config, run_workdir):
    stop = 3 if run_workdir.endswith("/b") else 0
    return train_and_evaluate(run_config, run_workdir, _stage_stopping_at(run_config, stop))

  def train(run_config, run_workdir):
    return train_and_evaluate(run_config, run_workdir, stages.for_config(run_config))

  calls = [sweep_lib.run_all(runs, interrupting, log=lambda _: None)]
  statuses = [sweep_lib.status(r) for r in runs]
  checkpoints_b = sorted(os.listdir(os.path.join(runs[1].workdir, "checkpoints")))
  calls.append(sweep_lib.run_all(runs, train, log=lambda _: None))
  calls.append(sweep_lib.run_all(runs, train, log=lambda _: None))
  return workdir, runs, calls, statuses, checkpoints_b


