"""Hugging Face checkpoints <-> lm parameters: GPT-2, Llama 2/3/3.1, Mistral, Qwen2, Gemma.

Letters: L layers, D model dim, N query heads, K kv heads, H head dim, F ffn dim, V vocab.

Each family is a config translation (HF `config.json` <-> ModelConfig) and a table that maps
every lm parameter to an HF tensor name and a layout change. A layout change is "split
some HF axes into several, then transpose", e.g. q_proj.weight [N*H, D] -> split
((N, H), (D,)) -> [N, H, D] -> transpose (2, 0, 1) -> lm query [D, N, H]. GPT-2 packs q, k
and v into one Conv1D tensor [D, 3D]; an `offset` on its last axis picks each part.

Loading streams: every parameter becomes a `jax.make_array_from_callback` whose callback
reads, from safetensors, only the block that one device holds (for stacked layers, that
block of each layer), so no host ever holds a whole model. Only safetensors are read: no
pickle, no remote code. Export (one tensor at a time into safetensors) is hf_export.py.

HF Llama-family RoPE rotates halves (i, i + H/2), as lm does, so q and k need no
permutation; the parity tests in tests/interop/test_hf.py check every family.
"""

import dataclasses
import json
import math
import os
import re
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh

from lm.interop import safetensors_files as files
from lm.model import Decoder, ModelConfig
from lm.parallel import mesh as mesh_lib
from lm.parallel import rules as rules_lib
from lm.train import state as state_lib

SUPPORTED = ("gpt2", "llama", "mistral", "qwen2", "gemma")
# Model types people will try, and what lm lacks for each.
UNSUPPORTED_HINTS = {
    "gemma2": "logit soft-capping (attn_logit_softcapping, final_logit_softcapping) and "
              "alternating sliding-window layers",
    "gemma3": "logit soft-capping, q/k norms and alternating sliding-window layers",
    "qwen3": "q/k RMSNorm (q_norm, k_norm)",
    "phi3": "fused qkv / gate_up projections and partial rotary",
    "mixtral": "mixture-of-experts MLPs",
}
# ModelConfig fields a run may choose on top of an import: numerics and memory only.
RUNTIME_FIELDS = ("dtype", "remat", "scan_layers", "init_std", "attention", "loss_chunk",
                  "frozen_dtype")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja")


# --------------------------------------------------------------------------------------------
# Layout changes: HF tensor <-> lm parameter.

@dataclasses.dataclass(frozen=True)
class Tensor:
  """One lm parameter (for per-layer ones: one layer of it) and where it lives in HF."""
  lm: str                          # "layers/attention/query": the path below `params`
  hf: str                          # "model.layers.{i}.self_attn.q_proj.weight"
  split: tuple[tuple[int, ...], ...]  # per HF axis, the sizes it splits into
  perm: tuple[int, ...]            # lm axis k is axis perm[k] of the split tensor
  offset: int = 0                  # start of this part along the HF tensor's last axis

  @property
  def split_shape(self) -> tuple[int, ...]:
    return tuple(s for group in self.split for s in group)

  @property
  def lm_shape(self) -> tuple[int, ...]:
    return tuple(self.split_shape[p] for p in self.perm)

  @property
  def hf_part_shape(self) -> tuple[int, ...]:
    return tuple(math.prod(group) for group in self.split)

  @property
  def per_layer(self) -> bool:
    return "{i}" in self.hf

  def to_lm(self, block: np.ndarray) -> np.ndarray:
    """A whole HF part -> the lm layout."""
    return block.reshape(self.split_shape).transpose(self.perm)

  def to_hf(self, value: np.ndarray) -> np.ndarray:
    """An lm value (one layer) -> the HF layout of this part."""
    return np.transpose(value, np.argsort(self.perm)).reshape(self.hf_part_shape)

  def read(self, reader: "files.Reader", name: str,
           box: tuple[tuple[int, int], ...]) -> np.ndarray:
    """The block `box` (start, stop per lm axis) of this parameter, reading no more of the
    HF tensor than the box needs (whole inner axes of a split axis at most)."""
    split_box = [None] * len(self.perm)
    for lm_axis, split_axis in enumerate(self.perm):
      split_box[split_axis] = box[lm_axis]
    hf_index, read_shape, inner = [], [], []
    axis = 0
    for j, group in enumerate(self.split):
      inner_size = math.prod(group[1:])
      start, stop = split_box[axis]
      offset = self.offset if j == len(self.split) - 1 else 0
      hf_index.append(slice(offset + start * inner_size, offset + stop * inner_size))
      read_shape.extend([stop - start, *group[1:]])
      inner.append(slice(None))
      inner.extend(slice(*split_box[axis + m]) for m in range(1, len(group)))
      axis += len(group)
    block = reader.read(name, tuple(hf_index)).reshape(read_shape)[tuple(inner)]
    return block.transpose(self.perm)


def same(lm: str, hf: str, *shape: int) -> Tensor:
  return Tensor(lm, hf, tuple((s,) for s in shape), tuple(range(len(shape))))


def linear(lm: str, hf: str, d_in: int, d_out: int) -> Tensor:
  """torch.nn.Linear weight [out, in] -> lm [in, out]."""
  return Tensor(lm, hf, ((d_out,), (d_in,)), (1, 0))


def heads_in(lm: str, hf: str, heads: int, head_dim: int, d: int) -> Tensor:
  """q/k/v_proj.weight [heads*H, D] -> lm [D, heads, H]."""
  return Tensor(lm, hf, ((heads, head_dim), (d,)), (2, 0, 1))


def heads_out(lm: str, hf: str, heads: int, head_dim: int, d: int) -> Tensor:
  """o_proj.weight [D, N*H] -> lm [N, H, D]."""
  return Tensor(lm, hf, ((d,), (heads, head_dim)), (1, 2, 0))


def head_bias(lm: str, hf: str, heads: int, head_dim: int, offset: int = 0) -> Tensor:
  """q/k/v_proj.bias [heads*H] -> lm [heads, H]."""
  return Tensor(lm, hf, ((heads, head_dim),), (0, 1), offset)


# --------------------------------------------------------------------------------------------
# Families: config translation and the parameter table.

def _rope(c: dict) -> dict:
  """rope_theta and Llama 3.1 scaling from `rope_parameters` (transformers 5) or the older
  `rope_theta` + `rope_scaling`."""
  rope = {**(c.get("rope_scaling") or {}), **(c.get("rope_parameters") or {})}
  kind = rope.get("rope_type", rope.get("type", "default"))
  out = {"rope_theta": float(rope.get("rope_theta", c.get("rope_theta", 10_000.0)))}
  if kind == "llama3":
    out.update(rope_scaling="llama3", rope_scaling_factor=float(rope["factor"]),
               rope_low_freq_factor=float(rope["low_freq_factor"]),
               rope_high_freq_factor=float(rope["high_freq_factor"]),
               rope_original_max_len=int(rope["original_max_position_embeddings"]))
  elif kind != "default":
    raise ValueError(f"config.json rope_scaling type {kind!r} (rope_parameters.rope_type) is not "
                     "supported; lm implements 'default' and 'llama3'")
  return out


def _rope_to_hf(m: ModelConfig) -> dict:
  """Both spellings, so transformers 4 and 5 read the same rotation."""
  params = {"rope_type": "default", "rope_theta": m.rope_theta}
  scaling = None
  if m.rope_scaling == "llama3":
    scaling = {"rope_type": "llama3", "factor": m.rope_scaling_factor,
               "low_freq_factor": m.rope_low_freq_factor,
               "high_freq_factor": m.rope_high_freq_factor,
               "original_max_position_embeddings": m.rope_original_max_len}
    params.update(scaling)
  return {"rope_theta": m.rope_theta, "rope_scaling": scaling, "rope_parameters": params}


def _require(c: dict, name: str, allowed: tuple, default: Any = None) -> None:
  value = c.get(name, default)
  if value not in allowed:
    raise ValueError(f"config.json {name}={value!r} is not supported for model_type "
                     f"{c.get('model_type')!r}; lm supports {' or '.join(map(repr, allowed))}")


def _llama_like_config(c: dict, tie_default: bool, **family) -> ModelConfig:
  n = c["num_attention_heads"]
  d = c["hidden_size"]
  head_dim = c.get("head_dim") or d // n
  return ModelConfig(
      vocab_size=c["vocab_size"], d_model=d, num_layers=c["num_hidden_layers"], num_heads=n,
      num_kv_heads=c.get("num_key_value_heads") or n,
      head_dim=0 if head_dim * n == d else head_dim, d_ff=c["intermediate_size"],
      max_seq_len=c.get("max_position_embeddings", 2048),
      norm_eps=float(c.get("rms_norm_eps", 1e-6)),
      tie_embeddings=bool(c.get("tie_word_embeddings", tie_default)), **_rope(c), **family)


def _llama_like_hf(m: ModelConfig) -> dict:
  return {"vocab_size": m.vocab_size, "hidden_size": m.d_model,
          "intermediate_size": m.d_ff, "num_hidden_layers": m.num_layers,
          "num_attention_heads": m.num_heads, "num_key_value_heads": m.num_kv_heads,
          "head_dim": m.resolved_head_dim, "max_position_embeddings": m.max_seq_len,
          "rms_norm_eps": m.norm_eps, "tie_word_embeddings": m.tie_embeddings,
          **_rope_to_hf(m)}


def _llama_like_tensors(m: ModelConfig) -> list[Tensor]:
  d, f, h = m.d_model, m.d_ff, m.resolved_head_dim
  n, k = m.num_heads, m.num_kv_heads
  layer = "model.layers.{i}."
  table = [
      same("embed/embedding", "model.embed_tokens.weight", m.vocab_size, d),
      same("final_norm/scale", "model.norm.weight", d),
      same("layers/attention_norm/scale", layer + "input_layernorm.weight", d),
      same("layers/mlp_norm/scale", layer + "post_attention_layernorm.weight", d),
      heads_in("layers/attention/query", layer + "self_attn.q_proj.weight", n, h, d),
      heads_in("layers/attention/key", layer + "self_attn.k_proj.weight", k, h, d),
      heads_in("layers/attention/value", layer + "self_attn.v_proj.weight", k, h, d),
      heads_out("layers/attention/out", layer + "self_attn.o_proj.weight", n, h, d),
      linear("layers/mlp/wi_gate", layer + "mlp.gate_proj.weight", d, f),
      linear("layers/mlp/wi_up", layer + "mlp.up_proj.weight", d, f),
      linear("layers/mlp/wo", layer + "mlp.down_proj.weight", f, d),
  ]
  if m.attention_bias:
    table += [head_bias(f"layers/attention/{name}_bias", layer + f"self_attn.{proj}.bias", heads, h)
              for name, proj, heads in (("query", "q_proj", n), ("key", "k_proj", k),
                                        ("value", "v_proj", k))]
  if not m.tie_embeddings:
    table.append(linear("lm_head", "lm_head.weight", d, m.vocab_size))
  return table


def _gpt2_config(c: dict) -> ModelConfig:
  _require(c, "activation_function", ("gelu_new", "gelu_pytorch_tanh"), "gelu_new")
  _require(c, "scale_attn_weights", (True,), True)
  _require(c, "scale_attn_by_inverse_layer_idx", (False,), False)
  _require(c, "add_cross_attention", (False,), False)
  d = c["n_embd"]
  return ModelConfig(
      vocab_size=c["vocab_size"], d_model=d, num_layers=c["n_layer"], num_heads=c["n_head"],
      num_kv_heads=c["n_head"], d_ff=c.get("n_inner") or 4 * d, max_seq_len=c["n_positions"],
      norm_eps=float(c.get("layer_norm_epsilon", 1e-5)),
      tie_embeddings=bool(c.get("tie_word_embeddings", True)), **FAMILIES["gpt2"].fixed)


def _gpt2_hf(m: ModelConfig) -> dict:
  return {"vocab_size": m.vocab_size, "n_embd": m.d_model, "n_layer": m.num_layers,
          "n_head": m.num_heads, "n_inner": m.d_ff, "n_positions": m.max_seq_len,
          "layer_norm_epsilon": m.norm_eps, "activation_function": "gelu_new",
          "tie_word_embeddings": m.tie_embeddings}


def _gpt2_tensors(m: ModelConfig) -> list[Tensor]:
  d, f, h, n = m.d_model, m.d_ff, m.resolved_head_dim, m.num_heads
  layer = "transformer.h.{i}."
  table = [
      same("embed/embedding", "transformer.wte.weight", m.vocab_size, d),
      same("position_embedding", "transformer.wpe.weight", m.max_seq_len, d),
      same("final_norm/scale", "transformer.ln_f.weight", d),
      same("final_norm/bias", "transformer.ln_f.bias", d),
      same("layers/attention_norm/scale", layer + "ln_1.weight", d),
      same("layers/attention_norm/bias", layer + "ln_1.bias", d),
      same("layers/mlp_norm/scale", layer + "ln_2.weight", d),
      same("layers/mlp_norm/bias", layer + "ln_2.bias", d),
      # Conv1D weights are [in, out]; c_attn packs q, k, v along its output axis.
      Tensor("layers/attention/out", layer + "attn.c_proj.weight", ((n, h), (d,)), (0, 1, 2)),
      same("layers/attention/out_bias", layer + "attn.c_proj.bias", d),
      same("layers/mlp/wi_up", layer + "mlp.c_fc.weight", d, f),
      same("layers/mlp/wi_up_bias", layer + "mlp.c_fc.bias", f),
      same("layers/mlp/wo", layer + "mlp.c_proj.weight", f, d),
      same("layers/mlp/wo_bias", layer + "mlp.c_proj.bias", d),
  ]
  for part, name in enumerate(("query", "key", "value")):
    table.append(Tensor(f"layers/attention/{name}", layer + "attn.c_attn.weight",
                        ((d,), (n, h)), (0, 1, 2), part * n * h))
    table.append(head_bias(f"layers/attention/{name}_bias", layer + "attn.c_attn.bias", n, h,
                           part * n * h))
  if not m.tie_embeddings:
    table.append(linear("lm_head", "lm_head.weight", d, m.vocab_size))
  return table


def _llama_config(c: dict) -> ModelConfig:
  _require(c, "hidden_act", ("silu",), "silu")
  _require(c, "attention_bias", (False,), False)  # Llama's bias is on o_proj too; lm's is not
  _require(c, "mlp_bias", (False,), False)
  return _llama_like_config(c, False, **FAMILIES["llama"].fixed)


def _mistral_config(c: dict) -> ModelConfig:
  _require(c, "hidden_act", ("silu",), "silu")
  # transformers masks key j for query i unless i - W < j <= i: lm's sliding_window = W.
  return _llama_like_config(c, False, sliding_window=int(c.get("sliding_window") or 0),
                            **FAMILIES["mistral"].fixed)


def _qwen2_config(c: dict) -> ModelConfig:
  _require(c, "hidden_act", ("silu",), "silu")
  _require(c, "use_sliding_window", (False,), False)
  layer_types = set(c.get("layer_types") or ["full_attention"])
  if layer_types != {"full_attention"}:
    raise ValueError(f"config.json layer_types={sorted(layer_types)} is not supported for "
                     "model_type 'qwen2'; lm supports only 'full_attention' layers")
  return _llama_like_config(c, False, **FAMILIES["qwen2"].fixed)


def _gemma_config(c: dict) -> ModelConfig:
  _require(c, "hidden_act", ("gelu", "gelu_pytorch_tanh"), "gelu_pytorch_tanh")
  if c.get("hidden_activation") is not None:
    _require(c, "hidden_activation", ("gelu_pytorch_tanh",))
  _require(c, "attention_bias", (False,), False)
  _require(c, "use_bidirectional_attention", (None, False), None)
  return _llama_like_config(c, True, **FAMILIES["gemma"].fixed)


@dataclasses.dataclass(frozen=True)
class Family:
  model_type: str
  architecture: str                               # the transformers class that loads it
  fixed: dict                                     # ModelConfig fields the family pins
  to_model_config: Callable[[dict], ModelConfig]
  to_hf_config: Callable[[ModelConfig], dict]
  tensors: Callable[[ModelConfig], list[Tensor]]
  hf_extra: dict = dataclasses.field(default_factory=dict)  # constant config.json entries


_LLAMA_FIXED = dict(norm="rmsnorm", norm_plus_one=False, mlp="swiglu", positions="rope",
                    use_bias=False, scale_embeddings=False)

FAMILIES: dict[str, Family] = {
    "gpt2": Family("gpt2", "GPT2LMHeadModel",
                   dict(norm="layernorm", norm_plus_one=False, mlp="gelu", positions="learned",
                        use_bias=True, attention_bias=False, scale_embeddings=False,
                        sliding_window=0), _gpt2_config, _gpt2_hf, _gpt2_tensors,
                   {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False}),
    "llama": Family("llama", "LlamaForCausalLM",
                    dict(_LLAMA_FIXED, attention_bias=False, sliding_window=0), _llama_config,
                    _llama_like_hf, _llama_like_tensors,
                    {"hidden_act": "silu", "attention_bias": False, "mlp_bias": False}),
    "mistral": Family("mistral", "MistralForCausalLM", dict(_LLAMA_FIXED, attention_bias=False),
                      _mistral_config,
                      lambda m: {**_llama_like_hf(m), "sliding_window": m.sliding_window or None},
                      _llama_like_tensors, {"hidden_act": "silu"}),
    "qwen2": Family("qwen2", "Qwen2ForCausalLM",
                    dict(_LLAMA_FIXED, attention_bias=True, sliding_window=0), _qwen2_config,
                    lambda m: {**_llama_like_hf(m), "max_window_layers": m.num_layers},
                    _llama_like_tensors,
                    {"hidden_act": "silu", "use_sliding_window": False, "sliding_window": None}),
    "gemma": Family("gemma", "GemmaForCausalLM",
                    dict(norm="rmsnorm", norm_plus_one=True, mlp="geglu", positions="rope",
                         use_bias=False, attention_bias=False, scale_embeddings=True,
                         sliding_window=0), _gemma_config, _llama_like_hf, _llama_like_tensors,
                    {"hidden_act": "gelu_pytorch_tanh", "attention_bias": False}),
}


def read_hf_config(directory: str) -> dict:
  path = os.path.join(directory, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{directory} holds no config.json: is it a Hugging Face model "
                            "directory?")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def family_of(hf_config: dict) -> Family:
  """The family of an HF config.json; an unsupported architecture or option names itself."""
  model_type = hf_config.get("model_type")
  if model_type not in FAMILIES:
    hint = UNSUPPORTED_HINTS.get(model_type, "")
    raise ValueError(f"config.json model_type={model_type!r} (architectures="
                     f"{hf_config.get('architectures')}) is not supported"
                     f"{': lm lacks ' + hint if hint else ''}; supported: {', '.join(SUPPORTED)}")
  for option in ("attn_logit_softcapping", "final_logit_softcapping", "quantization_config"):
    if hf_config.get(option) is not None:
      raise ValueError(f"config.json {option}={hf_config[option]!r} is not supported")
  return FAMILIES[model_type]


def model_config(directory: str, **overrides) -> ModelConfig:
  """The ModelConfig of an HF model directory; `overrides` set RUNTIME_FIELDS (dtype, remat,
  scan_layers, init_std), never the architecture."""
  fixed = sorted(set(overrides) - set(RUNTIME_FIELDS))
  if fixed:
    raise ValueError(f"{fixed} come from {directory}/config.json; only {RUNTIME_FIELDS} may be "
                     "overridden")
  hf_config = read_hf_config(directory)
  return family_of(hf_config).to_model_config(hf_config).replace(**overrides)


def family_for(config: ModelConfig) -> Family:
  """The HF family that represents `config` exactly; else an error naming the fields."""
  order = ("gpt2", "gemma", "qwen2", "llama", "mistral")
  for name in order:
    if all(getattr(config, k) == v for k, v in FAMILIES[name].fixed.items()):
      if name == "gpt2" and (config.num_kv_heads != config.num_heads or config.head_dim not in (
          0, config.d_model // config.num_heads)):
        raise ValueError(f"GPT-2 has multi-head attention with head_dim = d_model / num_heads; "
                         f"model.num_kv_heads={config.num_kv_heads}, "
                         f"model.head_dim={config.head_dim} cannot be exported")
      return FAMILIES[name]
  near = FAMILIES["llama"].fixed
  diffs = [f"model.{k}={getattr(config, k)!r}" for k, v in near.items() if getattr(config, k) != v]
  raise ValueError(f"No Hugging Face family has this architecture ({', '.join(diffs)} differ "
                   f"from Llama); exportable: {', '.join(SUPPORTED)}")


# --------------------------------------------------------------------------------------------
# Loading.

def _find(reader: files.Reader, name: str) -> str | None:
  """The stored name: exactly, or without the "model." / "transformer." prefix (the original
  GPT-2 files)."""
  if name in reader.shapes:
    return name
  short = name.split(".", 1)[1]
  return short if short in reader.shapes else None


# Stored tensors that are buffers, not parameters.
_IGNORED = re.compile(r"(\.attn\.(masked_)?bias|rotary_emb\.inv_freq)$")


def _layer_entries(table: list[Tensor],
                   config: ModelConfig) -> dict[str, tuple[Tensor, int | None]]:
  """Parameter path -> (tensor, its layer; None for a whole or a stacked parameter)."""
  paths = {}
  for t in table:
    if t.per_layer and not config.scan_layers:
      for i in range(config.num_layers):
        paths[t.lm.replace("layers/", f"layers_{i}/", 1)] = (t, i)
    else:
      paths[t.lm] = (t, None)
  return paths


def path_name(keys) -> str:
  return "/".join(str(getattr(k, "key", k)) for k in keys)


def param_shardings(config: ModelConfig, mesh: Mesh,
                    rules: rules_lib.Rules = rules_lib.DEFAULT_RULES) -> Any:
  """Shardings of `config`'s parameter tree from lm's logical-axis rules."""
  boxed = state_lib.abstract_boxed_params(Decoder(config))
  rules_lib.check_divisible(boxed, dict(mesh.shape), rules)
  return rules_lib.logical_shardings(boxed, mesh, rules)


def load_params(directory: str, config: ModelConfig, shardings: Any,
                leaf_fn: Callable[[str, jax.Array], Any] | None = None) -> Any:
  """Parameters of the HF model in `directory`, each created directly in its sharding.

  `shardings` is the tree of NamedShardings of `config`'s parameters (`param_shardings`, or
  the train state's). Each device's block is read from disk by that device's callback.
  `leaf_fn(path, leaf)` replaces each leaf as soon as it is read (QLoRA quantizes it there).
  """
  family = family_of(read_hf_config(directory))
  table = family.tensors(config)
  reader = files.Reader(directory)
  try:
    # Every stored tensor must be used, and every used one must have the expected shape.
    names = {}
    for t in table:
      full = t.hf.format(i=0)
      stored = _find(reader, full)
      if stored is None:
        raise ValueError(f"{directory}: tensor {full!r} is missing (model_type "
                         f"{family.model_type!r})")
      names[t.hf] = stored.replace(".0.", ".{i}.", 1) if t.per_layer else stored
    expected = {}
    for t in table:
      shape = list(t.hf_part_shape)
      if t.offset or any(o.hf == t.hf and o is not t for o in table):
        shape[-1] = sum(o.hf_part_shape[-1] for o in table if o.hf == t.hf)
      for i in range(config.num_layers if t.per_layer else 1):
        expected[names[t.hf].format(i=i)] = tuple(shape)
    for name, shape in expected.items():
      if reader.shapes.get(name) != shape:
        raise ValueError(f"{directory}: tensor {name!r} has shape {reader.shapes.get(name)}, "
                         f"but config.json implies {shape}")
    unused = sorted(n for n in reader.shapes if n not in expected and not _IGNORED.search(n)
                    and not (config.tie_embeddings and n.endswith("lm_head.weight")))
    if unused:
      raise ValueError(f"{directory}: tensors {unused[:5]}{' ...' if len(unused) > 5 else ''} "
                       f"have no place in lm's {family.model_type} model; an option lm does not "
                       "support?")

    entries = _layer_entries(table, config)
    flat_shardings = {path_name(p): s for p, s in jax.tree_util.tree_leaves_with_path(shardings)}
    if set(flat_shardings) != set(entries):
      raise ValueError(f"The {family.model_type} table does not cover lm's parameters: "
                       f"{sorted(set(flat_shardings) ^ set(entries))}")

    def make(path: str, sharding) -> jax.Array:
      t, layer = entries[path]
      stacked = t.per_layer and layer is None
      shape = ((config.num_layers,) if stacked else ()) + t.lm_shape
      cache: dict[tuple, np.ndarray] = {}  # replicated blocks are read once

      def callback(index: tuple[slice, ...]) -> np.ndarray:
        box = tuple((s.start or 0, dim if s.stop is None else s.stop)
                    for s, dim in zip(index, shape))
        if box not in cache:
          if stacked:
            cache[box] = np.stack([t.read(reader, names[t.hf].format(i=i), box[1:])
                                   for i in range(*box[0])])
          else:
            cache[box] = t.read(reader, names[t.hf].format(i=layer), box)
        return cache[box]

      return jax.make_array_from_callback(shape, sharding, callback)

    leaf_fn = leaf_fn or (lambda path, x: x)
    return jax.tree_util.tree_map_with_path(
        lambda p, s: leaf_fn(path_name(p), make(path_name(p), s)), shardings)
  finally:
    reader.close()


def load(directory: str, mesh: Mesh | None = None,
         rules: rules_lib.Rules = rules_lib.DEFAULT_RULES, **overrides) -> tuple[ModelConfig, Any]:
  """(ModelConfig, params) of a Hugging Face model directory, for `Decoder(config).apply`.

  Parameters are sharded over `mesh` by lm's logical rules (default: a mesh of every local
  device on the data axis, which replicates them). `overrides` set run-time ModelConfig
  fields such as dtype or scan_layers.
  """
  config = model_config(directory, **overrides)
  mesh = mesh or mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  return config, load_params(directory, config, param_shardings(config, mesh, rules))


def copy_tokenizer_files(source: str | None, destination: str) -> list[str]:
  """Copies the Hugging Face tokenizer files of `source` (local or gs://, if any)."""
  from etils import epath  # pylint: disable=import-outside-toplevel
  copied = []
  if not source:
    return copied
  destination = epath.Path(destination)
  destination.mkdir(parents=True, exist_ok=True)
  for name in TOKENIZER_FILES:
    path = epath.Path(source) / name
    if path.exists():
      (destination / name).write_bytes(path.read_bytes())
      copied.append(name)
  return copied


def has_tokenizer(directory: str) -> bool:
  return os.path.exists(os.path.join(directory, "tokenizer.json"))
