"""Named model shapes: the published architectures plus small ones for CPU work.

`get(name)` returns a ModelConfig; experiment configs pick one with `model.preset` and
override single fields (`--config.model.num_layers=4`). Parameter counts equal the
published ones (tests/model/test_presets.py checks them with jax.eval_shape).
"""

from lm.model.config import ModelConfig

_LLAMA = dict(norm="rmsnorm", mlp="swiglu", positions="rope", tie_embeddings=False)
# 7B and up train on accelerators: bfloat16 compute (parameters and optimizer state stay
# float32; norms, softmax and the loss run in float32), remat "full" and the chunked loss
# (what lets llama3-8b at seq 8192 fit a v5p chip: README "Long context").
_BIG = dict(_LLAMA, dtype="bfloat16", remat="full", loss_chunk=512)

PRESETS: dict[str, ModelConfig] = {
    # For tests: compiles in seconds.
    "tiny": ModelConfig(vocab_size=512, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
                        d_ff=256, max_seq_len=512, **_LLAMA),
    # The quickstart model: 1.7M parameters, byte-level, Llama-3-style (GQA, SwiGLU).
    "quickstart": ModelConfig(vocab_size=320, d_model=192, num_layers=4, num_heads=6,
                              num_kv_heads=2, d_ff=512, max_seq_len=1024, **_LLAMA),
    "gpt2-124m": ModelConfig(vocab_size=50257, d_model=768, num_layers=12, num_heads=12,
                             num_kv_heads=12, d_ff=3072, max_seq_len=1024, norm="layernorm",
                             mlp="gelu", positions="learned", use_bias=True, tie_embeddings=True),
    "llama2-7b": ModelConfig(vocab_size=32000, d_model=4096, num_layers=32, num_heads=32,
                             num_kv_heads=32, d_ff=11008, max_seq_len=4096, norm_eps=1e-5,
                             **_BIG),
    "llama3-8b": ModelConfig(vocab_size=128256, d_model=4096, num_layers=32, num_heads=32,
                             num_kv_heads=8, d_ff=14336, max_seq_len=8192, rope_theta=500_000.0,
                             **_BIG),
    "llama3.1-8b": ModelConfig(vocab_size=128256, d_model=4096, num_layers=32, num_heads=32,
                               num_kv_heads=8, d_ff=14336, max_seq_len=131072,
                               rope_theta=500_000.0, rope_scaling="llama3", **_BIG),
    "llama3-70b": ModelConfig(vocab_size=128256, d_model=8192, num_layers=80, num_heads=64,
                              num_kv_heads=8, d_ff=28672, max_seq_len=8192,
                              rope_theta=500_000.0, **_BIG),
    "mistral-7b": ModelConfig(vocab_size=32000, d_model=4096, num_layers=32, num_heads=32,
                              num_kv_heads=8, d_ff=14336, max_seq_len=32768,
                              sliding_window=4096, **_BIG),
    "qwen2-0.5b": ModelConfig(vocab_size=151936, d_model=896, num_layers=24, num_heads=14,
                              num_kv_heads=2, d_ff=4864, max_seq_len=32768, norm_eps=1e-6,
                              rope_theta=1_000_000.0, attention_bias=True,
                              norm="rmsnorm", mlp="swiglu", positions="rope",
                              tie_embeddings=True),
    "gemma-2b": ModelConfig(vocab_size=256000, d_model=2048, num_layers=18, num_heads=8,
                            num_kv_heads=1, head_dim=256, d_ff=16384, max_seq_len=8192,
                            norm="rmsnorm", norm_eps=1e-6, norm_plus_one=True, mlp="geglu",
                            positions="rope", tie_embeddings=True, scale_embeddings=True),
}

# Published parameter counts (embeddings included, tied tables counted once).
PUBLISHED_PARAM_COUNTS = {
    "gpt2-124m": 124_439_808,
    "llama2-7b": 6_738_415_616,
    "llama3-8b": 8_030_261_248,
    "llama3.1-8b": 8_030_261_248,
    "llama3-70b": 70_553_706_496,
    "mistral-7b": 7_241_732_096,
    "qwen2-0.5b": 494_032_768,
    "gemma-2b": 2_506_172_416,
}


def names() -> list[str]:
  return sorted(PRESETS)


def get(name: str) -> ModelConfig:
  """The preset called `name`; an unknown name lists the known ones."""
  if name not in PRESETS:
    raise ValueError(f"model.preset={name!r} is not a known preset; choose one of {names()}")
  return PRESETS[name]
