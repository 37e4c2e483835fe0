"""Held-out exact match (greedy, as `lm eval` scores it) of every checkpoint of a run.

    python experiments/rl/evaluate.py runs/grpo_tasks [--tasks=add,lookup,count] [--per_task=500]

Writes <workdir>/exact_match_n<per_task>.json: {step: {task: accuracy, ...}, ...}; step 0 is
the model the run started from (its init_from workdir), so the curve starts at SFT's numbers.
`--per_task` held-out questions per task (lm/data/tasks.py; the first 50 are `lm eval`'s):
with n questions the standard error of an accuracy p is sqrt(p(1-p)/n), 7 points at n=50
and p=0.5, 2.2 at n=500. `--every` scores only checkpoints whose step it divides.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

# pylint: disable=wrong-import-position
import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from lm import config as config_lib
from lm.data import tasks as tasks_lib
from lm.data import tokenizer as tokenizer_lib
from lm.eval import exact_match
from lm.infer.engine import Engine
from lm.model import Decoder
from lm.parallel import mesh as mesh_lib
from lm.parallel import rules as rules_lib
from lm.train import checkpoint as checkpoint_lib
from lm.train import state as state_lib


def params_at(workdir: str, step: int, abstract, shardings):
  item = {"params": rules_lib.with_shardings(abstract, shardings)}
  with ocp.PyTreeCheckpointer() as checkpointer:
    return checkpointer.restore(
        epath.Path(workdir) / "checkpoints" / str(step) / "state",
        args=ocp.args.PyTreeRestore(item=item, partial_restore=True,
                                    restore_args=ocp.checkpoint_utils.construct_restore_args(item))
    )["params"]


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("workdir")
  parser.add_argument("--tasks", default=None)
  parser.add_argument("--per_task", type=int, default=500)
  parser.add_argument("--every", type=int, default=1)
  parser.add_argument("--batch_size", type=int, default=250)
  args = parser.parse_args()
  args.workdir = os.path.abspath(args.workdir)
  config = ml_collections.ConfigDict(json.loads(
      (epath.Path(args.workdir) / "config.json").read_text()))
  model_config = config_lib.model_config(config)
  tokenizer = tokenizer_lib.for_workdir(config.data.tokenizer, args.workdir)
  mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  abstract, shardings = state_lib.abstract_params_and_shardings(
      Decoder(model_config), mesh, rules_lib.DEFAULT_RULES)
  tasks = args.tasks.split(",") if args.tasks else None
  records = tasks_lib.records("eval", tasks=tasks, eval_per_task=args.per_task)
  out_path = epath.Path(args.workdir) / f"exact_match_n{args.per_task}.json"
  results = json.loads(out_path.read_text()) if out_path.exists() else {}
  steps = sorted(int(p.name) for p in (epath.Path(args.workdir) / "checkpoints").iterdir()
                 if p.name.isdigit() and int(p.name) % args.every == 0)
  for step in [0] + steps:
    if set(tasks_lib.check_tasks(tasks)) <= set(results.get(str(step), {})):
      continue
    if step == 0:
      params = checkpoint_lib.restore_params(config.init_from, abstract, shardings)
    else:
      params = params_at(args.workdir, step, abstract, shardings)
    engine = Engine(model_config, params, tokenizer, mesh=mesh)
    scores = exact_match.score(records, exact_match.replies(engine, records,
                                                                  batch_size=args.batch_size))
    results[str(step)] = {**results.get(str(step), {}),
                          **{task: s["accuracy"] for task, s in scores.items()}}
    print(step, results[str(step)], flush=True)
    out_path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    jax.clear_caches()


if __name__ == "__main__":
  main()
