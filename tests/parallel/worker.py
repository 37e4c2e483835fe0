"""Runs training in a fresh process with its own device count (set by the parent in XLA_FLAGS).

  python worker.py '{"runs": [{"workdir": ..., "overrides": {"mesh.fsdp": 8}}], ...}'

Optional keys: "distributed": [coordinator_address, num_processes, process_id] joins a
multi-host job first; "shards": a mesh whose state layout is printed as JSON instead;
"digest": {"workdir": ..., "overrides": ...} prints a hash of the parameters of that
workdir's newest checkpoint, restored on this job's mesh (after the runs).
"""

import hashlib
import json
import sys

import jax
import numpy as np
from jax.experimental import multihost_utils

from lm import config as config_lib
from lm.parallel import mesh as mesh_lib
from lm.parallel import rules as rules_lib
from lm.model import Decoder
from lm.train import checkpoint as checkpoint_lib
from lm.train import optim
from lm.train import state as state_lib
from lm import stages
from lm.stages import train_and_evaluate


def make_config(overrides: dict):
  config = config_lib.base_config()
  config.model.preset = "tiny"
  config.data.source = "synthetic:markov"
  t = config.train
  t.steps, t.batch_size, t.seq_len, t.lr, t.warmup_steps = 5, 8, 32, 3e-3, 2
  t.log_every, t.eval_every, t.checkpoint_every = 1, 1000, 5
  config.data.eval_documents = 1
  for key, value in overrides.items():
    if "." not in key:  # a top-level field: stage, init_from
      config[key] = value
      continue
    section, field = key.split(".")
    config[section][field] = value
  return config_lib.lock(config)


def shard_layout(overrides: dict) -> dict:
  """Global and per-device shapes of every parameter and optimizer leaf."""
  config = make_config(overrides)
  mesh = mesh_lib.make_mesh(config.mesh)
  stage = stages.for_config(config)(config, None)  # the stage's model: LoRA adds adapters
  model = stage.make_model(config_lib.model_config(config))
  tx = optim.make_optimizer(config.train)
  _, shardings = state_lib.state_shardings(model, tx, mesh, rules_lib.DEFAULT_RULES,
                                           stage.partition)
  state = state_lib.create_train_state(model, tx, jax.random.key(0), shardings, stage.partition)
  layout = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    shards = leaf.addressable_shards
    layout[jax.tree_util.keystr(path)] = {
        "shape": list(leaf.shape), "shard_shapes": [list(s.data.shape) for s in shards],
        "devices": len({s.device for s in shards})}
  return layout


def params_digest(workdir: str, overrides: dict) -> str:
  """sha256 of every parameter's bytes (tree order) in `workdir`'s newest checkpoint, restored
  sharded on the mesh of `overrides` and gathered whole from every process."""
  config = make_config(overrides)
  mesh = mesh_lib.make_mesh(config.mesh)
  abstract, shardings = state_lib.abstract_params_and_shardings(
      Decoder(config_lib.model_config(config)), mesh, rules_lib.DEFAULT_RULES)
  params = checkpoint_lib.restore_params(workdir, abstract, shardings)
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(params):
    digest.update(np.asarray(multihost_utils.process_allgather(leaf, tiled=True)).tobytes())
  return digest.hexdigest()


def main(spec: dict) -> None:
  if "distributed" in spec:
    mesh_lib.initialize_distributed(*spec["distributed"])
  if "shards" in spec:
    print("LAYOUT " + json.dumps(shard_layout(spec["shards"])))
  for run in spec.get("runs", []):
    train_and_evaluate(make_config(run["overrides"]), run["workdir"])
  if "digest" in spec:
    print("DIGEST " + params_digest(spec["digest"]["workdir"], spec["digest"]["overrides"]))


if __name__ == "__main__":
  main(json.loads(sys.argv[1]))
