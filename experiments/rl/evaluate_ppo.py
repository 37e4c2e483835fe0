"""PPO's held-out evaluation (lm/rl/ppo_iteration.py's Evaluation) of a workdir's newest
checkpoint, or of the starting model when the workdir is new: the SFT baseline the PPO
curves start from (the loop evaluates only every train.eval_every steps, never at step 0).

    python experiments/rl/evaluate_ppo.py configs/ppo_tasks.py:SFT,RM runs/ppo_sft_baseline

Prints and writes WORKDIR/eval_ppo.json: the reward, each reward term, the KL to the
reference per response and the length, over every held-out prompt (one sampled response
each, the evaluation's fixed key).
"""

import contextlib
import json
import os
import sys

import flax.linen as nn
import jax
from ml_collections import config_flags  # pylint: disable=unused-import

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from lm import stages  # pylint: disable=wrong-import-position
from lm.train import checkpoint as checkpoint_lib  # pylint: disable=wrong-import-position
from lm.train import loop  # pylint: disable=wrong-import-position


def load_config(spec: str):
  import importlib.util  # pylint: disable=import-outside-toplevel
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


@contextlib.contextmanager
def newest_state(config, workdir: str):
  """(setup, train state) of `workdir`'s newest checkpoint, or of the start (`init_from`)
  when it has none, inside the run's mesh and logical axis rules."""
  setup = loop.set_up(config, workdir, stages.for_config(config))
  with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
    manager = checkpoint_lib.make_manager(workdir, 3)
    state, train_data, _ = loop.initial_state(setup, workdir, manager)
    train_data.close()
    manager.close()
    yield setup, state


def main(spec: str, workdir: str) -> dict:
  with newest_state(load_config(spec), workdir) as (setup, state):
    eval_set = setup.stage.eval_set(setup.source.eval, setup.config, setup.rows)
    metrics = loop.evaluate(setup.stage.make_eval_step(setup), state,
                            [setup.to_global(b) for b in eval_set.batches], eval_set,
                            setup.stage)
  metrics["step"] = int(jax.device_get(state.step))
  with open(os.path.join(workdir, "eval_ppo.json"), "w", encoding="utf-8") as f:
    json.dump(metrics, f, indent=2)
  return metrics


if __name__ == "__main__":
  print(json.dumps(main(*sys.argv[1:3]), indent=2))
