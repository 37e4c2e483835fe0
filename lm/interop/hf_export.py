"""lm parameters -> a Hugging Face directory (`lm convert --to_hf`): safetensors written one
tensor at a time through each family's table in hf.py (the same table that import reads),
config.json, and the tokenizer's files.
"""

import json
import math
import os
from typing import Any, Callable, Iterator

import jax
import numpy as np

from lm.interop import hf
from lm.interop import safetensors_files as files
from lm.model import ModelConfig


def _host(x: jax.Array) -> np.ndarray:
  if x.is_fully_addressable:
    return np.asarray(x)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _hf_tensors(config: ModelConfig, params: Any) -> Iterator[tuple[str, tuple[int, ...],
                                                                    Callable[[], np.ndarray]]]:
  """(name, shape, make) for every HF tensor, in file order; `make` builds one on the host."""
  table = hf.FAMILIES[hf.family_for(config).model_type].tensors(config)
  flat = {hf.path_name(p): x for p, x in jax.tree_util.tree_leaves_with_path(params)}
  groups: dict[str, list[hf.Tensor]] = {}
  for t in table:
    groups.setdefault(t.hf, []).append(t)
  for layer in [None] + list(range(config.num_layers)):
    for hf_name, parts in groups.items():
      if parts[0].per_layer != (layer is not None):
        continue
      shape = list(parts[0].hf_part_shape)
      shape[-1] = sum(t.hf_part_shape[-1] for t in parts)

      def make(parts=parts, layer=layer, shape=tuple(shape)):
        out = np.zeros(shape, np.float32)
        for t in parts:
          if layer is None:
            value = flat[t.lm]
          elif config.scan_layers:
            value = flat[t.lm][layer]
          else:
            value = flat[t.lm.replace("layers/", f"layers_{layer}/", 1)]
          part = t.to_hf(_host(value))
          out[..., t.offset:t.offset + part.shape[-1]] = part
        return out

      yield hf_name.format(i=layer), tuple(shape), make


def to_hf_config(config: ModelConfig, tokenizer: Any = None, base: dict | None = None,
                 dtype: str = "float32") -> dict:
  """config.json for `config`: architecture from lm, token ids from the tokenizer, anything
  else (generation defaults, ...) kept from `base`, the config.json it was imported from."""
  family = hf.family_for(config)
  out = dict(base or {}) if (base or {}).get("model_type") == family.model_type else {}
  for stale in ("rope_scaling", "rope_parameters", "rope_theta", "head_dim", "torch_dtype",
                "transformers_version"):
    out.pop(stale, None)
  out.update(family.hf_extra)
  out.update(family.to_hf_config(config))
  out.update(architectures=[family.architecture], model_type=family.model_type, dtype=dtype)
  if tokenizer is not None:
    for name in ("bos", "eos", "pad"):
      token_id = getattr(tokenizer, f"{name}_id", None)
      if token_id is not None and f"{name}_token_id" not in out:
        out[f"{name}_token_id"] = int(token_id)
  return out


def save(directory: str, config: ModelConfig, params: Any, tokenizer: Any = None,
         base_hf_config: dict | None = None, dtype: str = "float32",
         max_shard_bytes: int = 5 << 30) -> None:
  """Writes `model.safetensors` (or shards and an index), `config.json` and, for Hugging Face
  tokenizers, their files: a directory `transformers.AutoModelForCausalLM` loads.

  Every process must call it (layers are gathered collectively); process 0 writes.
  """
  if dtype not in files.DTYPES:
    raise ValueError(f"dtype={dtype!r} must be one of {sorted(files.DTYPES)}")
  writer = jax.process_index() == 0
  tensors = list(_hf_tensors(config, params))
  itemsize = np.dtype(files.DTYPES[dtype][1]).itemsize
  shards, size = [[]], 0
  for tensor in tensors:
    nbytes = math.prod(tensor[1]) * itemsize
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(tensor)
    size += nbytes
  if writer:
    os.makedirs(directory, exist_ok=True)
  if len(shards) == 1:
    names = ["model.safetensors"]
  else:
    names = [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
  for file, shard in zip(names, shards):
    if writer:
      files.write(os.path.join(directory, file), shard, dtype)
    else:  # take part in the gathers
      for _, _, make in shard:
        make()
  if not writer:
    return
  if len(shards) > 1:
    index = {"metadata": {"total_size": sum(math.prod(s) * itemsize for _, s, _ in tensors)},
             "weight_map": {name: file for file, shard in zip(names, shards)
                            for name, _, _ in shard}}
    with open(os.path.join(directory, "model.safetensors.index.json"), "w",
              encoding="utf-8") as f:
      json.dump(index, f, indent=2)
  with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
    json.dump(to_hf_config(config, tokenizer, base_hf_config, dtype), f, indent=2, sort_keys=True)
  hf.copy_tokenizer_files(getattr(tokenizer, "directory", None), directory)
