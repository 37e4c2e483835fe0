"""PEFT LoRA adapters (`adapter_config.json` + `adapter_model.safetensors`) <-> lm adapters.

Letters: R rank; a weight W is lm [*in, *out], HF torch.nn.Linear [O, I] (I, O flattened).

PEFT keeps, per adapted torch.nn.Linear `...{module}`, `...{module}.lora_A.weight` [R, I] and
`...{module}.lora_B.weight` [O, R], and adds `(lora_alpha / r) * B @ A @ x`. lm's adapters
(lm/model/lora.py) are `W_lora_a` [*in, R] and `W_lora_b` [R, *out]: the same matrices
flattened and transposed, in the axis order lm/interop/hf.py's table gives each weight (HF
flattens q_proj's output as (N, H), as lm's [N, H] does). Only plain LoRA is read: rsLoRA,
DoRA, per-module ranks, biases and `modules_to_save` are refused by name.
"""

import json
import os
import re
from typing import Any

import flax
import jax
import numpy as np
import safetensors.numpy

from lm.interop import hf
from lm.model import ModelConfig
from lm.model import lora as lora_lib

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."


def _modules(config: ModelConfig) -> dict[str, str]:
  """lm weight path (stacked: "layers/attention/query") -> HF module name with `{i}`."""
  table = hf.family_for(config).tensors(config)
  return {t.lm: t.hf.removesuffix(".weight") for t in table
          if t.per_layer and t.hf.endswith(".weight") and len(t.lm_shape) >= 2}


def _layer_paths(path: str, config: ModelConfig) -> list[tuple[str, int | None]]:
  if config.scan_layers:
    return [(path, None)]
  return [(path.replace("layers/", f"layers_{i}/", 1), i) for i in range(config.num_layers)]


def _inputs(path: str) -> int:
  """How many leading axes of the lm weight the matmul contracts."""
  return 2 if path.endswith("attention/out") else 1


def load_adapter(directory: str, config: ModelConfig) -> tuple[lora_lib.LoraConfig, Any]:
  """(LoraConfig, adapter tree) of a PEFT LoRA directory, for `config`'s parameter layout."""
  with open(os.path.join(directory, CONFIG_FILE), encoding="utf-8") as f:
    spec = json.load(f)
  unsupported = [k for k in ("use_rslora", "use_dora", "rank_pattern", "alpha_pattern",
                             "modules_to_save") if spec.get(k)]
  if spec.get("peft_type", "LORA") != "LORA" or spec.get("bias", "none") != "none":
    unsupported.append(f"peft_type={spec.get('peft_type')}, bias={spec.get('bias')}")
  if unsupported:
    raise ValueError(f"{directory}/{CONFIG_FILE}: lm reads plain LoRA only; unsupported: "
                     f"{unsupported}")
  tensors = safetensors.numpy.load_file(os.path.join(directory, WEIGHTS_FILE))
  rank = int(spec["r"])
  adapters, adapted = {}, []
  for path, module in _modules(config).items():
    a_name = PREFIX + module + ".lora_A.weight"
    if a_name.format(i=0) not in tensors:
      continue
    adapted.append(path)
    b_name = PREFIX + module + ".lora_B.weight"
    k = _inputs(path)
    a = [tensors.pop(a_name.format(i=i)) for i in range(config.num_layers)]  # [R, I] each
    b = [tensors.pop(b_name.format(i=i)) for i in range(config.num_layers)]  # [O, R] each
    w_shape = _weight_shape(config, path)
    for lm_path, layer in _layer_paths(path, config):
      layers = range(config.num_layers) if layer is None else [layer]
      a_lm = np.stack([a[i].T.reshape(*w_shape[:k], rank) for i in layers])
      b_lm = np.stack([b[i].T.reshape(rank, *w_shape[k:]) for i in layers])
      if layer is not None:
        a_lm, b_lm = a_lm[0], b_lm[0]
      adapters[lm_path + "_lora_a"] = a_lm.astype(np.float32)
      adapters[lm_path + "_lora_b"] = b_lm.astype(np.float32)
  if tensors:
    raise ValueError(f"{directory}/{WEIGHTS_FILE}: tensors {sorted(tensors)[:5]} have no "
                     "place in lm's adapters")
  names = "|".join(re.escape(p.removeprefix("layers/")) for p in adapted)
  lora = lora_lib.LoraConfig(rank=rank, alpha=float(spec["lora_alpha"]),
                             dropout=float(spec.get("lora_dropout", 0.0)),
                             targets=f"({names})$")
  return lora, flax.traverse_util.unflatten_dict(adapters, sep="/")


def _weight_shape(config: ModelConfig, path: str) -> tuple[int, ...]:
  table = hf.family_for(config).tensors(config)
  return next(t.lm_shape for t in table if t.lm == path)


def save_adapter(directory: str, config: ModelConfig, lora: lora_lib.LoraConfig, adapters: Any,
                 base_model: str = "") -> None:
  """Writes `adapters` (lm layout, stacked or not) as a PEFT LoRA directory."""
  flat = {k: np.asarray(jax.device_get(v), np.float32)
          for k, v in flax.traverse_util.flatten_dict(adapters, sep="/").items()}
  tensors, targets = {}, set()
  for path, module in _modules(config).items():
    for lm_path, layer in _layer_paths(path, config):
      if lm_path + "_lora_a" not in flat:
        continue
      targets.add(module.rsplit(".", 1)[-1])
      a, b = flat[lm_path + "_lora_a"], flat[lm_path + "_lora_b"]
      for i in (range(config.num_layers) if layer is None else [layer]):
        a_i, b_i = (a[i], b[i]) if layer is None else (a, b)
        name = PREFIX + module.format(i=i)
        tensors[name + ".lora_A.weight"] = np.ascontiguousarray(
            a_i.reshape(-1, lora.rank).T)                    # [R, I]
        tensors[name + ".lora_B.weight"] = np.ascontiguousarray(
            b_i.reshape(lora.rank, -1).T)                    # [O, R]
  os.makedirs(directory, exist_ok=True)
  safetensors.numpy.save_file(tensors, os.path.join(directory, WEIGHTS_FILE),
                              metadata={"format": "pt"})
  spec = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": lora.rank,
          "lora_alpha": lora.alpha, "lora_dropout": lora.dropout, "bias": "none",
          "target_modules": sorted(targets), "base_model_name_or_path": base_model,
          "fan_in_fan_out": False, "inference_mode": True, "use_rslora": False}
  with open(os.path.join(directory, CONFIG_FILE), "w", encoding="utf-8") as f:
    json.dump(spec, f, indent=2)
