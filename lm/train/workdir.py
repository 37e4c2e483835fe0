"""Operator errors caught before anything compiles: a workdir that cannot be written or has no
room for a checkpoint, and a config that no longer fits the checkpoints in the workdir."""

import dataclasses
import os
import shutil
from typing import Callable

from absl import logging
from etils import epath
import jax
import ml_collections

from lm import config as config_lib


def prepare(workdir: str, checkpoint_bytes: int) -> None:
  """Creates `workdir` and checks that a file can be written there and that the disk holds one
  more checkpoint of `checkpoint_bytes`."""
  path = epath.Path(workdir)
  probe = path / f".lm_write_probe.{jax.process_index()}"
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise OSError(f"--workdir={workdir} cannot be written ({type(e).__name__}: {e}); pass a "
                  "directory this user can create and write to") from e
  if "://" in workdir:  # object stores have no free-space figure
    return
  free = shutil.disk_usage(os.path.abspath(workdir)).free
  if free < checkpoint_bytes:
    raise OSError(f"--workdir={workdir} has {free / 1e9:.1f} GB free, but one checkpoint of "
                  f"this run (parameters and optimizer state) takes {checkpoint_bytes / 1e9:.1f} "
                  "GB: free space, or pass a --workdir on a larger disk")


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


# Model fields that change how the model is computed, not what it computes.
COMPUTE_FIELDS = ("dtype", "remat", "scan_layers", "max_seq_len", "init_std", "attention",
                  "loss_chunk", "frozen_dtype")


def _model_changes(saved: dict, current: dict) -> list[str]:
  """"model.<field>: old -> new" for each field of the resolved ModelConfigs (preset and
  overrides) that differs, compute-only fields aside; the raw model.* fields when a config no
  longer resolves (a preset since removed)."""
  try:
    old, new = ({f"model.{k}": v for k, v in dataclasses.asdict(
        config_lib.model_config(ml_collections.ConfigDict(c))).items()} for c in (saved, current))
  except Exception:  # pylint: disable=broad-except
    old, new = ({k: v for k, v in _flatten(c).items() if k.startswith("model.")}
                for c in (saved, current))
  return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(old.keys() | new.keys())
          if old.get(key) != new.get(key) and key.split(".", 1)[1] not in COMPUTE_FIELDS]


def resume_check(config_json: dict, workdir: str
                 ) -> Callable[[dict | None, int, bool], None]:
  """check(saved_config, step, fits): raises when the checkpoint at `step` cannot continue the
  run whose config is `config_json`: `fits` is False (its arrays have other shapes or
  structure, e.g. another model or optimizer), or the model computes another function with
  the same shapes (another MLP, RoPE theta, window, norm epsilon) and
  train.allow_model_change is off. Logs every other changed field (a new learning rate or
  step count is allowed)."""
  current = _flatten(config_json)

  def check(saved: dict | None, step: int, fits: bool) -> None:
    before = _flatten(saved) if saved is not None else current
    changed = {key: f"{key}: {before.get(key)!r} -> {current.get(key)!r}"
               for key in sorted(before.keys() | current.keys())
               if before.get(key) != current.get(key)}
    if not fits:
      shape_fields = [d for k, d in changed.items()
                      if k.startswith("model.") or k == "train.optimizer"]
      raise ValueError(
          f"The checkpoint at step {step} in {workdir} does not fit this config: its parameter "
          f"or optimizer arrays have other shapes ({'; '.join(shape_fields) or 'see config.json'}"
          "). Resume with the checkpoint's settings, or train the new shape in a new --workdir")
    model_changes = _model_changes(saved, config_json) if saved is not None else []
    if model_changes and not current.get("train.allow_model_change"):
      raise ValueError(
          f"The checkpoint at step {step} in {workdir} was trained as another model with the "
          f"same shapes ({'; '.join(model_changes)}). Resume with the checkpoint's settings, "
          "train the new model in a new --workdir, or pass "
          "--config.train.allow_model_change=True to continue from these weights")
    if changed:
      logging.warning("Config changed since the checkpoint at step %d (allowed, resuming): %s",
                      step, "; ".join(changed.values()))

  return check
