"""Orbax checkpoints: async save of the train state beside the data position, keep the last K,
and restore the newest one onto whatever shardings the current run asks for. An imported
model is parameters alone, in `workdir/params`.
"""

import dataclasses
import json
import logging as py_logging
import re
import time
from typing import Any, Callable

from absl import logging
from etils import epath
import flax
import jax
from jax.experimental import multihost_utils
import ml_collections
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from lm import config as config_lib
from lm.interop import base_ref
from lm.model import Decoder, ModelConfig
from lm.model import lora as lora_lib
from lm.model import quant
from lm.parallel import mesh as mesh_lib
from lm.parallel import rules as rules_lib
from lm.train import state as state_lib

PARAMS_DIR = "params"  # parameters alone, as `lm convert --from_hf` writes them
FROZEN_DIR = "frozen"  # a stage's frozen parameters, written once


class DataStateHandler(ocp.CheckpointHandler):
  """The positions of the input streams (lm/data/pipeline.py): one JSON file per stream.

  Every process writes the streams it reads (processes that share rows write the same bytes)
  and reads back the streams it reads now, so a checkpoint resumes on another number of
  processes as long as the streams are the same. Beside each stream's position: the
  fingerprint of the streams and the seed they were shuffled by."""

  def save(self, directory: epath.Path, args: "DataStateSave") -> None:
    for stream, state in args.state["streams"].items():
      payload = json.dumps({"fingerprint": args.state["fingerprint"],
                            "seed": args.state.get("seed"), "state": state})
      tmp = directory / f".stream_{stream}.json.{jax.process_index()}"
      tmp.write_text(payload)
      tmp.replace(directory / f"stream_{stream}.json")

  def restore(self, directory: epath.Path, args: "DataStateRestore") -> dict | None:
    """{"fingerprint", "seed", "streams"} for the streams asked for; None when one is
    missing. The seed is None in checkpoints older than it (their fingerprint holds it)."""
    streams, saved = {}, {}
    for stream in args.streams:
      path = directory / f"stream_{stream}.json"
      if not path.exists():
        return None
      saved = json.loads(path.read_text())
      streams[str(stream)] = saved["state"]
    return {"fingerprint": saved.get("fingerprint"), "seed": saved.get("seed"),
            "streams": streams}

  def metadata(self, directory: epath.Path) -> None:
    return None

  def finalize(self, directory: epath.Path) -> None:
    pass

  def close(self) -> None:
    pass


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
  state: dict[str, Any]


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
  streams: list[int]


def make_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  # Orbax writes each checkpoint into a temporary directory and renames it when complete, and
  # deletes the oldest of `keep` only after that: a kill mid-save leaves the previous ones.
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True,
                                         create=True, cleanup_tmp_directories=True)
  return ocp.CheckpointManager(_root(workdir) / "checkpoints", options=options)


def save(manager: ocp.CheckpointManager, state, data_state: dict, config: dict,
         force: bool = False) -> bool:
  """Starts an async save of `state` at its step, beside `data_state` (the input streams'
  positions, taken now) and the run's config; returns at once while the arrays are written."""
  step = int(jax.device_get(state.step))
  return manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    data=DataStateSave(data_state),
                                                    config=ocp.args.JsonSave(config)),
                      force=force)


def saved_config(manager: ocp.CheckpointManager, step: int) -> dict | None:
  """The config a checkpoint was written with (None for a checkpoint without one)."""
  if not (manager.directory / str(step) / "config").exists():
    return None
  return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]


def _shapes(tree) -> dict[tuple, tuple]:
  """{path as names and indices: shape}, comparable between a state and Orbax's metadata."""
  return {tuple(re.findall(r"\w+", jax.tree_util.keystr(path))): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _stored_shapes(manager: ocp.CheckpointManager, step: int) -> dict[tuple, tuple]:
  absl_logger = logging.get_absl_logger()
  level = absl_logger.level
  absl_logger.setLevel(py_logging.ERROR)  # Orbax warns that the item has no step metadata
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      return _shapes(checkpointer.metadata(epath.Path(manager.directory) / str(step) / "state")
                     .item_metadata)
  finally:
    absl_logger.setLevel(level)


def restore_latest(manager: ocp.CheckpointManager, abstract_state, shardings,
                   streams: list[int], check: Callable[[dict | None, int, bool], None]):
  """(state, data_state) of the newest readable checkpoint, or None when there is none.

  `check(saved_config, step, fits)` runs first (`fits`: the stored arrays have this run's
  shapes) and raises when the checkpoint cannot continue this run: that is the operator's to
  resolve, not a broken file. A checkpoint that cannot be read (truncated, corrupt) is moved
  to `unreadable_checkpoints/` beside `checkpoints/`, with a warning naming it, and the one
  before it is tried; nothing is deleted. data_state is None when the checkpoint lacks one of
  `streams`."""
  target = rules_lib.with_shardings(abstract_state, shardings)
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      config, stored = saved_config(manager, step), _stored_shapes(manager, step)
    except Exception as e:  # pylint: disable=broad-except
      _set_aside(manager, step, e)
      continue
    check(config, step, stored == _shapes(abstract_state))
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), data=DataStateRestore(streams)))
    except Exception as e:  # pylint: disable=broad-except
      _set_aside(manager, step, e)
      continue
    return restored["state"], restored["data"]
  return None


def _set_aside(manager: ocp.CheckpointManager, step: int, error: Exception) -> None:
  directory = epath.Path(manager.directory)
  aside = directory.parent / "unreadable_checkpoints" / f"{step}-{int(time.time())}"
  logging.warning("The checkpoint %s cannot be read (%s: %s); it is moved to %s and the "
                  "previous checkpoint is tried", directory / str(step), type(error).__name__,
                  str(error)[:300], aside)
  multihost_utils.sync_global_devices(f"lm_unreadable_checkpoint_{step}")
  if jax.process_index() == 0:
    aside.parent.mkdir(parents=True, exist_ok=True)
    (directory / str(step)).rename(aside)
  multihost_utils.sync_global_devices(f"lm_unreadable_checkpoint_{step}_moved")
  manager.reload()


def _root(workdir: str) -> epath.Path:
  """`workdir` as a path; a local one absolute, so that a later chdir cannot move it."""
  path = epath.Path(workdir)
  return path if "://" in workdir else path.absolute()


def save_params(workdir: str, params) -> None:
  """Writes `params` alone to `workdir/params` (an imported model: no step, no optimizer)."""
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(_root(workdir) / PARAMS_DIR, params, force=True)
    checkpointer.wait_until_finished()


def save_frozen(workdir: str, frozen) -> None:
  """Writes a stage's frozen tree once, to `workdir/frozen`: checkpoints leave it out (it never
  changes), so a LoRA run's checkpoints hold its adapters and optimizer state alone."""
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(_root(workdir) / FROZEN_DIR, frozen, force=True)
    checkpointer.wait_until_finished()


def restore_frozen(workdir: str, abstract_frozen, shardings):
  """The frozen tree `save_frozen` wrote, placed in `shardings`."""
  path = _root(workdir) / FROZEN_DIR
  if not path.exists():
    raise FileNotFoundError(f"{workdir} has checkpoints but no {FROZEN_DIR}/ (the stage's "
                            "frozen parameters, written when training started)")
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(path, rules_lib.with_shardings(abstract_frozen, shardings))


def restore_params(workdir: str, abstract_params, shardings, leaf_fn: Callable | None = None):
  """The parameters of `workdir`, placed in `shardings`: those of its newest checkpoint (the
  optimizer state is not read), else its imported `params/`; None when it has neither.

  `leaf_fn(path, array)`: read the parameters one leaf at a time and keep `leaf_fn`'s result
  for each (QLoRA quantizes an import so: no float copy of the whole model at once)."""
  root = _root(workdir)
  step = None
  if (root / "checkpoints").exists():
    with ocp.CheckpointManager(root / "checkpoints",
                               options=ocp.CheckpointManagerOptions(read_only=True)) as manager:
      step = manager.latest_step()
  if step is not None:
    path, wrap = root / "checkpoints" / str(step) / "state", lambda t: {"params": t}
  elif (root / PARAMS_DIR).exists():
    path, wrap = root / PARAMS_DIR, lambda t: t
  else:
    return None

  def restore(abstract, placed):
    item = wrap(rules_lib.with_shardings(abstract, placed))
    with ocp.PyTreeCheckpointer() as checkpointer:
      restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
          item=item, partial_restore=True,
          restore_args=ocp.checkpoint_utils.construct_restore_args(item)))
    return restored["params"] if step is not None else restored

  if leaf_fn is None:
    return restore(abstract_params, shardings)
  flat, placed = (flax.traverse_util.flatten_dict(t, sep="/") for t in (abstract_params,
                                                                           shardings))
  unflatten = lambda path, x: flax.traverse_util.unflatten_dict({path: x}, sep="/")
  return flax.traverse_util.unflatten_dict({
      path: leaf_fn(path, flax.traverse_util.flatten_dict(restore(
          unflatten(path, leaf), unflatten(path, placed[path])), sep="/")[path])
      for path, leaf in flat.items()}, sep="/")


def lora_of(config: ml_collections.ConfigDict) -> lora_lib.LoraConfig | None:
  """The LoRA of a workdir's saved config (None: it trained every parameter)."""
  return lora_lib.from_config(config.lora) if "lora" in config else None


def restore_adapters(workdir: str, config: ml_collections.ConfigDict, model_config: ModelConfig,
                     mesh: Mesh, rules: rules_lib.Rules = rules_lib.DEFAULT_RULES):
  """(LoraConfig, adapters, base) of a LoRA run in `workdir`: the adapters of its newest
  checkpoint, the base it wrote once (`frozen/`), both placed by `rules` on `mesh`."""
  base_ref.check(workdir)  # a ValueError if the base it adapted has changed since
  lora = lora_of(config)
  abstract, shardings = state_lib.abstract_params_and_shardings(
      lora_lib.adapt(Decoder(model_config), lora), mesh, rules)
  (adapters_abstract, base_abstract), (adapter_shardings, base_shardings) = (
      lora_lib.split(abstract), lora_lib.split(shardings))
  adapters = restore_params(workdir, adapters_abstract, adapter_shardings)
  if adapters is None:
    raise FileNotFoundError(f"--workdir={workdir} holds no checkpoint yet")
  kind = config.lora.get("quantize", "")
  if kind:  # QLoRA: the base was written quantized; returned dequantized (float32)
    shapes = {k: v.shape for k, v in flax.traverse_util.flatten_dict(
        abstract, sep="/").items()}
    double_quant = config.lora.get("double_quant", False)
    base_abstract = quant.quantize_tree(base_abstract, shapes, kind, double_quant)
    base_shardings = quant.quantize_tree(base_shardings, shapes, kind, double_quant)
  base = restore_frozen(workdir, {"base": base_abstract}, {"base": base_shardings})["base"]
  if kind:
    float_shardings = lora_lib.split(shardings)[1]
    base = jax.jit(quant.dequantize_tree, out_shardings=float_shardings)(base)
  return lora, adapters, base


def load_for_inference(workdir: str):
  """(config, ModelConfig, params) of the newest checkpoint in a training `workdir`, or of the
  parameters an import (`lm convert --from_hf`) wrote. Only the parameter subtree is read:
  no optimizer is built and its state stays on disk. A LoRA run's adapters are merged into
  its base (`W + alpha / rank * A @ B`), so the engine runs a plain Decoder."""
  config_path = epath.Path(workdir) / "config.json"
  if not config_path.exists():
    raise FileNotFoundError(f"--workdir={workdir} holds no config.json: is it a training run?")
  config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  model_config = config_lib.model_config(config)
  mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  if lora_of(config) is not None:
    lora, adapters, base = restore_adapters(workdir, config, model_config, mesh)
    merge = jax.jit(lambda a, b: lora_lib.merge(lora_lib.join(a, b), lora),
                    out_shardings=jax.tree.map(lambda x: x.sharding, base))
    return config, model_config, merge(adapters, base)
  abstract, shardings = state_lib.abstract_params_and_shardings(
      Decoder(model_config), mesh, rules_lib.DEFAULT_RULES)
  params = restore_params(workdir, abstract, shardings)
  if params is None:
    raise FileNotFoundError(f"--workdir={workdir} holds no checkpoint yet")
  return config, model_config, params
