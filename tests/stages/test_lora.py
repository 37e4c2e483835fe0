"""LoRA on a training stage (lm/stages/lora.py): from a pre-trained workdir, only the adapters
train and hold optimizer state; the base is written once, never changes, and resume works."""

import os

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp

from lm.model import lora
from lm.stages import train_and_evaluate
from lm.train import checkpoint as checkpoint_lib


def read(path: str) -> dict:
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(path)


def flat(tree) -> dict:
  return flax.traverse_util.flatten_dict(tree, sep="/")


def test_lora_trains_adapters_alone_on_a_frozen_base(make_config, tmp_path):
  base_dir, lora_dir = str(tmp_path / "base"), str(tmp_path / "lora")
  train_and_evaluate(make_config(train__steps=2, train__checkpoint_every=2), base_dir)
  base = flat(read(os.path.join(base_dir, "checkpoints", "2", "state"))["params"])

  def lora_config(**overrides):
    config = make_config(lora__rank=4, lora__alpha=8.0, train__lr=1e-2, **overrides)
    config.init_from = base_dir
    return config

  train_and_evaluate(lora_config(train__steps=2, train__checkpoint_every=2), lora_dir)
  frozen = flat(read(os.path.join(lora_dir, checkpoint_lib.FROZEN_DIR))["base"])
  saved = read(os.path.join(lora_dir, "checkpoints", "2", "state"))
  assert saved.get("frozen") is None                      # the base is not in checkpoints
  assert frozen.keys() == base.keys()
  for name, value in base.items():                        # the base, bitwise, never trained
    np.testing.assert_array_equal(frozen[name], value, err_msg=name)
  adapters = flat(saved["params"])
  assert adapters and all(lora.is_adapter(name) for name in adapters)
  assert len(adapters) == 2 * 7                           # q, k, v, o, up, gate, down
  assert all(np.asarray(v).any() for k, v in adapters.items() if k.endswith("_lora_b"))
  adapter_shapes = {np.shape(v) for v in adapters.values()}
  moments = [np.shape(x) for x in jax.tree.leaves(saved["opt_state"]) if np.ndim(x) > 1]
  assert moments and set(moments) <= adapter_shapes       # optimizer state: adapters only
  assert len(moments) == 2 * len(adapters)                # AdamW's mu and nu

  train_and_evaluate(lora_config(train__steps=3, train__checkpoint_every=1), lora_dir)
  resumed = read(os.path.join(lora_dir, "checkpoints", "3", "state"))
  frozen_after = flat(read(os.path.join(lora_dir, checkpoint_lib.FROZEN_DIR))["base"])
  for name, value in base.items():
    np.testing.assert_array_equal(frozen_after[name], value, err_msg=name)
  changed = [k for k, v in flat(resumed["params"]).items() if not np.array_equal(v, adapters[k])]
  assert any(k.endswith("_lora_a") for k in changed) and any(k.endswith("_lora_b") for k in changed)
