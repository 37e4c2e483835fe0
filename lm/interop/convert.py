"""`lm convert` and `--config.init_from`: Hugging Face model directories <-> lm workdirs.

An imported workdir (`lm convert --from_hf=DIR --workdir=OUT`) holds

  config.json     an experiment config whose model.* is the imported architecture and whose
                  data.tokenizer is hf:OUT/tokenizer, so `lm sample --workdir=OUT` works
  params/         the parameters (Orbax), without step or optimizer state
  tokenizer/      the Hugging Face tokenizer files, chat template included
  hf_config.json  the original config.json, whose other entries export keeps

`--config.init_from=hf:DIR` or `=WORKDIR` starts training from such parameters: the model
architecture and the tokenizer come from the import (`resolve`), the parameters are placed
straight into the train state's shardings (`load_params`), the optimizer state is fresh.
"""

import json
import os
from typing import Any, Callable

from etils import epath
import flax.linen as nn
import jax
import ml_collections

from lm import config as config_lib
from lm.data import tokenizer as tokenizer_lib
from lm.interop import base_ref
from lm.interop import hf
from lm.interop import hf_export
from lm.interop import peft
from lm.model import Decoder, ModelConfig
from lm.model import lora as lora_lib
from lm.parallel import mesh as mesh_lib
from lm.parallel import rules as rules_lib
from lm.train import checkpoint as checkpoint_lib
from lm.train import state as state_lib


def _placement(model_config: ModelConfig) -> tuple[Any, Any]:
  """(abstract params, shardings) for conversion: FSDP over every device when the shapes
  divide, else replicated."""
  model = Decoder(model_config)
  boxed = state_lib.abstract_boxed_params(model)
  rules = rules_lib.DEFAULT_RULES
  mesh = mesh_lib.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
  try:
    rules_lib.check_divisible(boxed, dict(mesh.shape), rules)
  except ValueError:
    mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  return nn.unbox(boxed), rules_lib.logical_shardings(boxed, mesh, rules)


def _workdir(path: str) -> str:
  """A local path made absolute (a later chdir cannot move it); gs:// kept as it is."""
  return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def read_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  path = epath.Path(workdir) / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"{workdir} holds no config.json: is it an lm workdir?")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def import_hf(hf_dir: str, workdir: str) -> ModelConfig:
  """`lm convert --from_hf=hf_dir --workdir=workdir`; returns the imported ModelConfig."""
  model_config = hf.model_config(hf_dir)
  _, shardings = _placement(model_config)
  params = hf.load_params(hf_dir, model_config, shardings)
  workdir = _workdir(workdir)
  checkpoint_lib.save_params(workdir, params)
  if jax.process_index() != 0:
    return model_config
  config = config_lib.base_config()
  for field in model_config.__dataclass_fields__:
    config.model[field] = getattr(model_config, field)
  root = epath.Path(workdir)
  if hf.has_tokenizer(hf_dir):
    hf.copy_tokenizer_files(hf_dir, str(root / "tokenizer"))
    config.data.tokenizer = f"hf:{root / 'tokenizer'}"
  (root / "hf_config.json").write_text(json.dumps(hf.read_hf_config(hf_dir), indent=2))
  (root / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
  return model_config


def export_hf(workdir: str, hf_dir: str, dtype: str = "float32",
              max_shard_bytes: int = 5 << 30, adapter_only: bool = False) -> ModelConfig:
  """`lm convert --workdir=workdir --to_hf=hf_dir`: the newest parameters of a training run
  (or an imported workdir) as a directory `transformers` loads. A LoRA run's adapters are
  merged into the base, or with `adapter_only` written alone in PEFT's format."""
  config = read_workdir_config(workdir)
  model_config = config_lib.model_config(config)
  hf.family_for(model_config)  # fail before reading anything
  abstract, shardings = _placement(model_config)
  lora = checkpoint_lib.lora_of(config)
  if adapter_only and lora is None:
    raise ValueError(f"--adapter_only: --workdir={workdir} trained no LoRA adapters "
                     "(lora.rank=0)")
  if lora is not None:
    mesh = jax.tree.leaves(shardings)[0].mesh
    _, adapters, base = checkpoint_lib.restore_adapters(workdir, config, model_config, mesh)
    if adapter_only:
      ref = base_ref.read(workdir) or {"init_from": config.init_from}
      peft.save_adapter(hf_dir, model_config, lora, adapters,
                        base_model=ref["init_from"].removeprefix("hf:"))
      return model_config
    params = jax.jit(lambda a, b: lora_lib.merge(lora_lib.join(a, b), lora),
                     out_shardings=shardings)(adapters, base)
  else:
    params = checkpoint_lib.restore_params(workdir, abstract, shardings)
  if params is None:
    raise FileNotFoundError(f"--workdir={workdir} holds no checkpoint and no params/")
  base_path = epath.Path(workdir) / "hf_config.json"
  base = json.loads(base_path.read_text()) if base_path.exists() else None
  tokenizer = tokenizer_lib.get(config.data.tokenizer)
  hf_export.save(hf_dir, model_config, params, tokenizer, base, dtype, max_shard_bytes)
  return model_config


def _source(init_from: str) -> tuple[ModelConfig, str | None, bool]:
  """(ModelConfig, tokenizer spec or None, is_hf) of an `init_from` value."""
  if init_from.startswith("hf:"):
    directory = os.path.abspath(os.path.expanduser(init_from[3:]))
    tokenizer = "hf:" + directory if hf.has_tokenizer(directory) else None
    return hf.model_config(directory), tokenizer, True
  if not epath.Path(_workdir(init_from)).is_dir():
    raise FileNotFoundError(f"init_from={init_from!r} is neither hf:DIR nor an existing lm workdir")
  config = read_workdir_config(_workdir(init_from))
  return config_lib.model_config(config), config.data.tokenizer, False


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` whose model.* and data.tokenizer are those of `config.init_from`.

  Fields the config sets explicitly must agree with the import (else an error names each);
  only hf.RUNTIME_FIELDS may differ (scan_layers only for HF imports: a workdir's
  checkpoint has its own layout).
  """
  imported, tokenizer, is_hf = _source(config.init_from)
  free = hf.RUNTIME_FIELDS if is_hf else tuple(f for f in hf.RUNTIME_FIELDS if f != "scan_layers")
  resolved = config.copy_and_resolve_references()
  conflicts = []
  for field in imported.__dataclass_fields__:
    value, wanted = getattr(imported, field), config.model[field]
    if field in free:
      continue
    if wanted is not None and wanted != value:
      conflicts.append(f"model.{field}={wanted!r} (the checkpoint has {value!r})")
    resolved.model[field] = value
  if tokenizer is not None:
    if config.data.tokenizer not in ("byte", tokenizer):
      conflicts.append(f"data.tokenizer={config.data.tokenizer!r} (the checkpoint's is "
                       f"{tokenizer!r})")
    resolved.data.tokenizer = tokenizer
  if conflicts:
    raise ValueError(f"init_from={config.init_from!r} fixes the model and its tokenizer; drop "
                     f"these overrides: {'; '.join(conflicts)}")
  return config_lib.lock(resolved)


def load_params(init_from: str, model_config: ModelConfig, shardings: Any,
                leaf_fn: Callable[[str, jax.Array], Any] | None = None) -> Any:
  """The parameters of `init_from`, each created directly in its sharding; with `leaf_fn`,
  read one leaf at a time and each replaced by `leaf_fn(path, leaf)` (QLoRA quantizes an
  import so, without a float copy of the whole model)."""
  if init_from.startswith("hf:"):
    return hf.load_params(os.path.expanduser(init_from[3:]), model_config, shardings, leaf_fn)
  boxed = state_lib.abstract_boxed_params(Decoder(model_config))
  # The bare shapes: under the train loop's mesh, nn.unbox would add sharding constraints.
  abstract = jax.tree.map(lambda x: x.value if isinstance(x, nn.meta.AxisMetadata) else x, boxed,
                          is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
  params = checkpoint_lib.restore_params(_workdir(init_from), abstract, shardings, leaf_fn)
  if params is None:
    raise FileNotFoundError(f"init_from={init_from!r} holds no checkpoint and no params/")
  return params
