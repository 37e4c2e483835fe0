"""Training stages and their registry: `config.stage` names the module whose `Stage` the loop
trains (the contract is lm/train/stage.py; the loop imports no stage)."""

import importlib
from typing import Any

import ml_collections

STAGES = {"pretrain": "lm.stages.pretrain", "sft": "lm.stages.sft", "reward": "lm.stages.reward",
          "dpo": "lm.stages.dpo", "grpo": "lm.stages.grpo", "ppo": "lm.stages.ppo"}


def get(name: str):
  """The Stage class of `config.stage`; ValueError names the field when it is unknown."""
  if name not in STAGES:
    raise ValueError(f"stage={name!r} is not one of {sorted(STAGES)}")
  return importlib.import_module(STAGES[name]).Stage


def for_config(config: ml_collections.ConfigDict):
  """The Stage class `config` trains: `config.stage`'s, with LoRA adapters when `lora.rank`
  is set (lm/stages/lora.py)."""
  from lm.stages import lora  # pylint: disable=import-outside-toplevel
  return lora.wrap(get(config.stage), config)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config` with the stage it names (lm/train/loop.py), resuming from `workdir`."""
  from lm.train import loop  # pylint: disable=import-outside-toplevel
  return loop.train_and_evaluate(config, workdir, for_config(config))
