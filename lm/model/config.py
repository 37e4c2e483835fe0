"""ModelConfig: every hyper-parameter of the decoder, in one frozen dataclass.

One config covers GPT-2, Llama 2/3, Mistral, Qwen2 and Gemma: the families differ only in
a handful of switches (norm kind, MLP kind, biases, positions, tying, scaling), so the
model code has no per-family branches beyond reading these fields.
"""

import dataclasses
from typing import Literal

NormKind = Literal["rmsnorm", "layernorm"]
MlpKind = Literal["swiglu", "geglu", "gelu"]
PositionKind = Literal["rope", "learned"]
RopeScaling = Literal["none", "llama3"]
DType = Literal["float32", "bfloat16", "float16"]
RematPolicy = Literal["none", "full", "dots", "dots_no_batch"]
AttentionKind = Literal["auto", "xla", "cudnn", "splash"]


ZERO_MEANS = {"head_dim": "d_model // num_heads", "sliding_window": "no window",
              "loss_chunk": "logits of the whole row at once"}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  # Sizes.
  vocab_size: int = 512              # V: rows of the embedding table (>= tokenizer vocabulary)
  d_model: int = 128                 # D: residual stream width
  num_layers: int = 2                # L: transformer blocks
  num_heads: int = 4                 # N: query heads
  num_kv_heads: int = 4              # K: key/value heads; N for MHA, 1 for MQA, else GQA
  head_dim: int = 0                  # H: per-head width; 0 means d_model // num_heads
  d_ff: int = 512                    # F: hidden width of the MLP
  max_seq_len: int = 2048            # longest sequence (learned positions, RoPE tables)
  # Architecture switches.
  norm: NormKind = "rmsnorm"
  norm_eps: float = 1e-5
  norm_plus_one: bool = False        # Gemma: scale is stored as (scale - 1)
  mlp: MlpKind = "swiglu"
  positions: PositionKind = "rope"
  rope_theta: float = 10_000.0
  rope_scaling: RopeScaling = "none"  # "llama3": Llama 3.1 frequency-dependent scaling
  rope_scaling_factor: float = 8.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_len: int = 8192
  attention_bias: bool = False       # biases on q/k/v projections (Qwen2)
  use_bias: bool = False             # biases everywhere: q/k/v/o, MLP, norms (GPT-2)
  tie_embeddings: bool = False       # logits reuse the embedding table
  scale_embeddings: bool = False     # multiply embeddings by sqrt(D) (Gemma)
  sliding_window: int = 0            # attend to at most this many past tokens; 0: unlimited
  # Numerics and memory.
  dtype: DType = "float32"           # compute dtype; trained parameters are always float32
  # Storage of parameters that are only read: a stage's frozen tree (a DPO/RL reference, a
  # LoRA base that is not quantized) and the inference engine's copy. "bfloat16" halves
  # their bytes; each is cast to `dtype` where it is used, as float32 ones are.
  frozen_dtype: DType = "float32"
  scan_layers: bool = True           # nn.scan over blocks: one compiled block, stacked params
  remat: RematPolicy = "none"        # what a block keeps for the backward pass
  # Attention kernel for training and scoring (decoding always uses "xla"): "splash" (TPU
  # Pallas), "cudnn" (NVIDIA fused), "xla" (materialises the [B, N, T, T] scores); "auto"
  # picks splash on TPU, cudnn on GPU in bfloat16/float16, else xla (lm/model/attention.py).
  attention: AttentionKind = "auto"
  # Output layer and cross-entropy in chunks of this many positions of each row, recomputed
  # in the backward pass, so the [B, T, V] logits never exist at once; 0: all at once.
  loss_chunk: int = 0
  init_std: float = 0.02             # normal init of weight matrices and embeddings

  def __post_init__(self):
    errors = []
    for name in ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "d_ff",
                 "max_seq_len"):
      if getattr(self, name) <= 0:
        errors.append(f"model.{name}={getattr(self, name)} must be positive")
    if self.num_heads > 0 and self.num_kv_heads > 0 and self.num_heads % self.num_kv_heads:
      errors.append(f"model.num_heads={self.num_heads} must be a multiple of "
                    f"model.num_kv_heads={self.num_kv_heads}")
    if self.head_dim == 0 and self.num_heads > 0 and self.d_model % self.num_heads:
      errors.append(f"model.d_model={self.d_model} is not divisible by "
                    f"model.num_heads={self.num_heads}; set model.head_dim explicitly")
    if self.positions == "rope" and self.resolved_head_dim % 2:
      errors.append(f"model.head_dim={self.resolved_head_dim} (d_model / num_heads when 0) must "
                    "be even for RoPE; change it or use model.positions='learned'")
    for name in ("head_dim", "sliding_window", "loss_chunk"):
      if getattr(self, name) < 0:
        errors.append(f"model.{name}={getattr(self, name)} must be >= 0 (0: "
                      f"{ZERO_MEANS[name]})")
    if self.rope_scaling == "llama3" and self.rope_low_freq_factor >= self.rope_high_freq_factor:
      errors.append(f"model.rope_low_freq_factor={self.rope_low_freq_factor} must be below "
                    f"model.rope_high_freq_factor={self.rope_high_freq_factor}")
    for name in ("rope_theta", "norm_eps", "init_std"):
      if getattr(self, name) <= 0:
        errors.append(f"model.{name}={getattr(self, name)} must be positive")
    for name, kinds in (("norm", NormKind), ("mlp", MlpKind), ("positions", PositionKind),
                        ("rope_scaling", RopeScaling), ("dtype", DType), ("frozen_dtype", DType),
                        ("remat", RematPolicy), ("attention", AttentionKind)):
      allowed = kinds.__args__
      if getattr(self, name) not in allowed:
        errors.append(f"model.{name}={getattr(self, name)!r} is not one of {allowed}")
    if errors:
      raise ValueError("Invalid model config: " + "; ".join(errors))

  @property
  def resolved_head_dim(self) -> int:
    return self.head_dim or self.d_model // max(self.num_heads, 1)

  @property
  def compute_dtype(self):
    import jax.numpy as jnp
    return jnp.dtype(self.dtype)

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)


def model_config_fields() -> dict[str, type]:
  """Field name -> Python type, so the experiment config can offer one override per field."""
  types = {}
  for field in dataclasses.fields(ModelConfig):
    default = field.default
    types[field.name] = type(default)
  return types
