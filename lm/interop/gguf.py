"""GGUF (llama.cpp) files -> lm workdirs: `lm convert --from_gguf=FILE --workdir=OUT`.

A GGUF holds the architecture as metadata (`llama.block_count`, ...), the tensors under
llama.cpp's names (`blk.0.attn_q.weight`), often quantized in blocks (Q8_0, Q4_1, Q4_K, ...),
and the tokenizer as metadata (vocabulary, merges, pre-tokenizer name, special ids, chat
template). The import reads it with the `gguf` package and turns it into what lm already
imports: a Hugging Face directory (config.json, float32 model.safetensors, tokenizer.json and
tokenizer_config.json) that `convert.import_hf` then reads through the one HF -> lm table in
`hf.py`. So there is one name mapping (GGUF -> HF, below) and no second lm parameter table.

What llama.cpp changed on the way in, undone here:
  - dequantization: `gguf.quants.dequantize` (every type it implements: `supported_types`);
  - q/k rows of the "llama" architecture: llama.cpp rotates interleaved pairs (2i, 2i+1),
    HF and lm rotate halves (i, i + H/2), so convert_hf_to_gguf.py permuted the rows of
    attn_q / attn_k per head; `_unpermute` inverts that permutation;
  - Gemma's RMSNorm weights were stored as 1 + w (llama.cpp's norm has no "+1"); 1 is
    subtracted again.
Letters: N query heads, K kv heads, H head dim, D model dim.
"""

import functools
import json
import os
import tempfile
from typing import Any

import numpy as np

from lm.interop import safetensors_files as files

# general.architecture -> HF model_type. Mistral files are written as "llama" by llama.cpp.
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "gemma": "gemma"}
# Architectures whose q/k rows llama.cpp permuted (its "normal" rope); the others use NEOX
# rope (halves), as HF does.
_PERMUTED = ("llama",)


@functools.cache
def supported_types() -> dict[int, str]:
  """ggml type id -> name, for every type `gguf.quants.dequantize` implements."""
  # pylint: disable=import-outside-toplevel
  import gguf
  from gguf import quants
  implemented = {"F32", "F16"} | {name for name in dir(quants)
                                  if name in gguf.GGMLQuantizationType.__members__}
  return {t.value: t.name for t in gguf.GGMLQuantizationType if t.name in implemented}


# GGUF tensor name -> HF tensor name; {i} is the layer.
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight",
                 "output_norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}
_LAYER_NAMES = {"attn_norm.weight": "input_layernorm.weight",
                "ffn_norm.weight": "post_attention_layernorm.weight",
                "attn_q.weight": "self_attn.q_proj.weight",
                "attn_k.weight": "self_attn.k_proj.weight",
                "attn_v.weight": "self_attn.v_proj.weight",
                "attn_output.weight": "self_attn.o_proj.weight",
                "attn_q.bias": "self_attn.q_proj.bias",
                "attn_k.bias": "self_attn.k_proj.bias",
                "attn_v.bias": "self_attn.v_proj.bias",
                "ffn_gate.weight": "mlp.gate_proj.weight",
                "ffn_up.weight": "mlp.up_proj.weight",
                "ffn_down.weight": "mlp.down_proj.weight"}


def hf_name(name: str) -> str | None:
  """The HF name of a GGUF tensor name, None for one lm has no place for."""
  if name in _GLOBAL_NAMES:
    return _GLOBAL_NAMES[name]
  parts = name.split(".", 2)
  if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
    return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
  return None


def metadata(reader) -> dict[str, Any]:
  """Every key-value field of the file as Python values (strings, numbers, lists)."""
  return {key: field.contents() for key, field in reader.fields.items()
          if not key.startswith("GGUF.")}


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
  """Inverts convert_hf_to_gguf.py's `permute`: rows [heads, 2, H/2] were stored as
  [heads, H/2, 2] (interleaved rotary pairs); back to halves."""
  rows = w.shape[0]
  return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute(w: np.ndarray, heads: int) -> np.ndarray:
  """llama.cpp's permutation of HF q/k rows (what `_unpermute` inverts)."""
  rows = w.shape[0]
  return w.reshape(heads, 2, rows // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_config(meta: dict[str, Any], tensor_names: set[str], path: str = "") -> dict:
  """An HF config.json for the file's architecture, from its metadata; an unsupported
  architecture or rope scaling names itself."""
  arch = meta.get("general.architecture")
  if arch not in ARCHITECTURES:
    raise ValueError(f"{path}: general.architecture={arch!r} is not supported; lm imports GGUF "
                     f"architectures {', '.join(sorted(ARCHITECTURES))} (Mistral files say "
                     "'llama')")

  def get(key: str, default: Any = None) -> Any:
    value = meta.get(f"{arch}.{key}", default)
    if value is None:
      raise ValueError(f"{path}: metadata {arch}.{key} is missing")
    return value

  scaling = meta.get(f"{arch}.rope.scaling.type", "none")
  if scaling not in ("none", None) or "rope_freqs.weight" in tensor_names:
    raise ValueError(f"{path}: rope scaling ({arch}.rope.scaling.type={scaling!r}"
                     f"{', a rope_freqs tensor' if 'rope_freqs.weight' in tensor_names else ''})"
                     " is not supported by the GGUF import; import the HF model instead")
  heads = int(get("attention.head_count"))
  d = int(get("embedding_length"))
  head_dim = int(meta.get(f"{arch}.attention.key_length") or d // heads)
  rotary = int(meta.get(f"{arch}.rope.dimension_count") or head_dim)
  if rotary != head_dim:
    raise ValueError(f"{path}: {arch}.rope.dimension_count={rotary} (partial rotary) is not "
                     f"supported; lm rotates the whole head ({head_dim})")
  tokens = meta.get("tokenizer.ggml.tokens") or []
  config = {
      "model_type": ARCHITECTURES[arch],
      "vocab_size": int(meta.get(f"{arch}.vocab_size") or len(tokens)),
      "hidden_size": d, "intermediate_size": int(get("feed_forward_length")),
      "num_hidden_layers": int(get("block_count")), "num_attention_heads": heads,
      "num_key_value_heads": int(meta.get(f"{arch}.attention.head_count_kv") or heads),
      "head_dim": head_dim, "max_position_embeddings": int(get("context_length", 2048)),
      "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-6)),
      "rope_theta": float(meta.get(f"{arch}.rope.freq_base") or 10_000.0),
      "tie_word_embeddings": "output.weight" not in tensor_names,
  }
  if arch == "gemma":
    config["hidden_act"] = "gelu_pytorch_tanh"
  for name in ("bos", "eos", "pad"):
    token_id = meta.get(f"tokenizer.ggml.{'padding' if name == 'pad' else name}_token_id")
    if token_id is not None:
      config[f"{name}_token_id"] = int(token_id)
  return config


def _check_type(tensor) -> None:
  if int(tensor.tensor_type) not in supported_types():
    raise ValueError(f"tensor {tensor.name!r} has type {tensor.tensor_type.name}, which the "
                     f"GGUF import cannot dequantize; supported: "
                     f"{', '.join(supported_types().values())}")


def dequantize(tensor) -> np.ndarray:
  """A GGUF tensor as float32, in numpy (row-major) order: GGUF's shape reversed."""
  from gguf import quants  # pylint: disable=import-outside-toplevel
  _check_type(tensor)
  shape = tuple(int(s) for s in reversed(tensor.shape))
  return np.asarray(quants.dequantize(tensor.data, tensor.tensor_type),
                    np.float32).reshape(shape)


def hf_tensors(reader, config: dict, path: str = "") -> dict[str, tuple[tuple[int, ...], Any]]:
  """HF name -> (shape, make) for every tensor; `make` dequantizes one when it is written."""
  arch = config["model_type"]
  out = {}
  unused = []
  for tensor in reader.tensors:
    name = hf_name(tensor.name)
    if name is None:
      unused.append(tensor.name)
      continue
    if str(tensor.name).endswith("attn_q.weight"):
      heads = config["num_attention_heads"]
    elif str(tensor.name).endswith("attn_k.weight"):
      heads = config["num_key_value_heads"]
    else:
      heads = None

    def make(tensor=tensor, heads=heads) -> np.ndarray:
      w = dequantize(tensor)
      if heads is not None and arch in _PERMUTED:
        w = _unpermute(w, heads)
      if arch == "gemma" and tensor.name.endswith("norm.weight"):
        w = w - 1.0
      return w

    out[name] = (tuple(int(s) for s in reversed(tensor.shape)), make)
  if unused:
    raise ValueError(f"{path}: tensors {unused[:5]}{' ...' if len(unused) > 5 else ''} have no "
                     f"place in lm's {arch} model")
  return out


def to_hf_dir(path: str, directory: str) -> dict:
  """Writes the GGUF at `path` as an HF model directory (float32 safetensors, config.json,
  tokenizer files); returns the config.json."""
  # pylint: disable=import-outside-toplevel
  from gguf import GGUFReader
  from lm.interop import gguf_tokenizer
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--from_gguf={path}: no such file")
  reader = GGUFReader(path)
  meta = metadata(reader)
  config = hf_config(meta, {t.name for t in reader.tensors}, path)
  tensors = hf_tensors(reader, config, path)
  for tensor in reader.tensors:  # fail on a type before writing anything
    _check_type(tensor)
  os.makedirs(directory, exist_ok=True)
  files.write(os.path.join(directory, "model.safetensors"),
              [(name, shape, make) for name, (shape, make) in tensors.items()], "float32")
  with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2)
  gguf_tokenizer.write(meta, directory, path)
  return config


def import_gguf(path: str, workdir: str):
  """`lm convert --from_gguf=path --workdir=workdir`; returns the imported ModelConfig."""
  from lm.interop import convert  # pylint: disable=import-outside-toplevel
  parent = os.path.dirname(os.path.abspath(os.path.expanduser(workdir)))
  os.makedirs(parent, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=parent, prefix=".gguf-import-") as hf_dir:
    to_hf_dir(path, hf_dir)
    return convert.import_hf(hf_dir, workdir)
