"""Orbax checkpoints: async save of the train state beside the data position, keep the last K,
and restore the newest one onto whatever shardings the current run asks for. An imported
model is parameters alone, in `workdir/params`.
"""

import json

from etils import epath
import jax
import ml_collections
import orbax.checkpoint as ocp

from lm import config as config_lib
from lm.model import Decoder
from lm.parallel import mesh as mesh_lib
from lm.parallel import rules as rules_lib
from lm.train import optim
from lm.train import state as state_lib

PARAMS_DIR = "params"  # parameters alone, as `lm convert --from_hf` writes them


def make_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True,
                                         create=True)
  path = epath.Path(workdir)
  if "://" not in workdir:  # a local path: absolute, so a later chdir cannot move it
    path = path.absolute()
  return ocp.CheckpointManager(path / "checkpoints", options=options)


def save(manager: ocp.CheckpointManager, state, data_state: dict, force: bool = False) -> bool:
  """Starts an async save of `state` at its step; returns at once while bytes are written."""
  step = int(jax.device_get(state.step))
  return manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    data=ocp.args.JsonSave(data_state)),
                      force=force)


def restore_latest(manager: ocp.CheckpointManager, abstract_state, shardings):
  """(state, data_state) of the newest checkpoint, or None when there is none."""
  step = manager.latest_step()
  if step is None:
    return None
  target = rules_lib.with_shardings(abstract_state, shardings)
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                           data=ocp.args.JsonRestore()))
  return restored["state"], restored["data"]


def _root(workdir: str) -> epath.Path:
  path = epath.Path(workdir)
  return path if "://" in workdir else path.absolute()


def save_params(workdir: str, params) -> None:
  """Writes `params` alone to `workdir/params` (an imported model: no step, no optimizer)."""
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(_root(workdir) / PARAMS_DIR, params, force=True)
    checkpointer.wait_until_finished()


def restore_params(workdir: str, abstract_params, shardings):
  """The parameters of `workdir`, placed in `shardings`: those of its newest checkpoint (the
  optimizer state is not read), else its imported `params/`; None when it has neither."""
  target = rules_lib.with_shardings(abstract_params, shardings)
  root = _root(workdir)
  step = None
  if (root / "checkpoints").exists():
    with ocp.CheckpointManager(root / "checkpoints",
                               options=ocp.CheckpointManagerOptions(read_only=True)) as manager:
      step = manager.latest_step()
  if step is not None:
    item = {"params": target}
    with ocp.PyTreeCheckpointer() as checkpointer:
      return checkpointer.restore(root / "checkpoints" / str(step) / "state",
                                  args=ocp.args.PyTreeRestore(
                                      item=item, partial_restore=True,
                                      restore_args=ocp.checkpoint_utils.construct_restore_args(item)
                                  ))["params"]
  if (root / PARAMS_DIR).exists():
    with ocp.StandardCheckpointer() as checkpointer:
      return checkpointer.restore(root / PARAMS_DIR, target)
  return None


def load_for_inference(workdir: str):
  """(config, ModelConfig, params) of the newest checkpoint in a training `workdir`, or of the
  parameters an import (`lm convert --from_hf`) wrote."""
  config_path = epath.Path(workdir) / "config.json"
  if not config_path.exists():
    raise FileNotFoundError(f"--workdir={workdir} holds no config.json: is it a training run?")
  config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  model_config = config_lib.model_config(config)
  model = Decoder(model_config)
  mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  abstract, shardings = state_lib.state_shardings(model, optim.make_optimizer(config.train), mesh,
                                                  rules_lib.DEFAULT_RULES)
  params = restore_params(workdir, abstract.params, shardings.params)
  if params is None:
    raise FileNotFoundError(f"--workdir={workdir} holds no checkpoint yet")
  return config, model_config, params
