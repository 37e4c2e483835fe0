"""Training MFU and batch-1 decode bandwidth of `lm` on one GPU or TPU chip.

    python benchmarks/accelerator_mfu.py                       # ~1B Llama, seq 2048 and 4096
    python benchmarks/accelerator_mfu.py --seq_lens=2048 --steps=5
    python benchmarks/accelerator_mfu.py --smoke --seq_lens=128 --tokens_per_batch=512  # CPU check

Training: the step `lm train` runs (benchmarks/lm_step.py: sharded state, donated jitted
step, pretrain loss) on a ~1.2B Llama (Llama 3.2 1B's shape: d 2048, 16 layers, 32 heads,
8 kv heads, d_ff 8192, vocab 128,256, tied embeddings) in bfloat16 compute with float32
parameters and AdamW state, `model.attention="auto"` (cuDNN on NVIDIA, splash on TPU) and the
chunked loss. MFU follows MaxText's convention (README.md, "Measuring MFU"), counted by
`lm.train.state.flops_per_token` as the loop and `lm plan` count it:

    FLOPs per token = 6 * (matmul weights, output projection included, input embedding not)
                      + 6 * L * N * H * T      (attention: 12 L N H T, halved for causal)
    MFU = FLOPs per token * tokens per second / peak dense bf16 FLOP/s of the chip

Recomputation under remat is not counted (it is work the model did not need). Decode:
`Engine.generate` at batch 1, with the parameters stored in bfloat16 (`model.frozen_dtype`),
as a fraction of the HBM roofline: every step must read the weights (embedding rows
gathered, not the table, unless tied) and the keys and values of the context once, so
    roofline fraction = bytes per step * steps per second / HBM bandwidth.

Not run in this repository's CI: it needs an accelerator (benchmarks/README.md says when and
where it was run). The first call of each shape compiles; compile time is printed apart.
"""

import statistics
import time

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import lm_step
from lm import config as config_lib
from lm.data.tokenizer import ByteTokenizer
from lm.infer.engine import Engine
from lm.infer.sampling import GREEDY
from lm.model import Decoder, ModelConfig
from lm.parallel import accelerators
from lm.train import state as state_lib

FLAGS = flags.FLAGS
flags.DEFINE_list("seq_lens", ["2048", "4096"], "Training sequence lengths.")
flags.DEFINE_integer("tokens_per_batch", 16384, "Tokens per training step (batch = this / seq).")
flags.DEFINE_string("remat", "none", "model.remat for training.")
flags.DEFINE_integer("loss_chunk", 1024, "model.loss_chunk for training (0: whole logits).")
flags.DEFINE_integer("steps", 10, "Timed training steps per round (after 3 warm-up steps).")
flags.DEFINE_integer("rounds", 3, "Timed rounds; the median is reported.")
flags.DEFINE_integer("prompt_len", 128, "Decode: prompt tokens.")
flags.DEFINE_integer("new_tokens", 256, "Decode: tokens generated.")
flags.DEFINE_bool("smoke", False, "A 4-layer d=128 model: checks the script runs (e.g. on CPU).")

MODEL = dict(vocab_size=128256, d_model=2048, num_layers=16, num_heads=32, num_kv_heads=8,
             d_ff=8192, max_seq_len=8192, rope_theta=500_000.0, tie_embeddings=True,
             dtype="bfloat16")
SMOKE = dict(MODEL, vocab_size=512, d_model=128, num_layers=4, num_heads=4, num_kv_heads=2,
             d_ff=256)


def model_fields() -> dict:
  return SMOKE if FLAGS.smoke else MODEL


def train_config(seq_len: int):
  config = config_lib.base_config()
  config.model.preset = "tiny"
  overrides = {**model_fields(), "remat": FLAGS.remat, "loss_chunk": FLAGS.loss_chunk}
  for name, value in overrides.items():
    config.model[name] = value
  config.train.seq_len = seq_len
  config.train.batch_size = max(1, FLAGS.tokens_per_batch // seq_len)
  config.train.warmup_steps = 1
  return config_lib.lock(config)


def train_row(seq_len: int, acc: accelerators.Accelerator) -> dict:
  config = train_config(seq_len)
  start = time.perf_counter()
  step = lm_step.TrainStep(config)
  rng = np.random.default_rng(0)
  b, t = config.train.batch_size, seq_len
  tokens = rng.integers(0, model_fields()["vocab_size"], (b, t + 1)).astype(np.int32)
  batch = step.put({"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
                    "loss_mask": np.ones((b, t), np.float32)})
  for _ in range(3):
    jax.block_until_ready(step(batch))
  compile_seconds = time.perf_counter() - start
  seconds = []
  for _ in range(FLAGS.rounds):
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
      metrics = step(batch)
    jax.block_until_ready(metrics)
    seconds.append((time.perf_counter() - start) / FLAGS.steps)
  step_seconds = statistics.median(seconds)
  m = config_lib.model_config(config)
  tokens_per_sec = b * t / step_seconds
  mfu = state_lib.flops_per_token(m, t) * tokens_per_sec / acc.peak_flops
  return {"seq": t, "batch": b, "step_ms": 1e3 * step_seconds, "tokens_per_sec": tokens_per_sec,
          "mfu": mfu, "compile_s": compile_seconds, "loss": float(metrics["loss"])}


def decode_row(acc: accelerators.Accelerator) -> dict:
  m = ModelConfig(**model_fields())
  params = jax.jit(Decoder(m).init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  engine = Engine(m.replace(frozen_dtype="bfloat16"), nn.unbox(params), ByteTokenizer())
  del params  # the engine keeps its own copy, stored in bfloat16
  prompt = np.random.default_rng(0).integers(0, 256, (1, FLAGS.prompt_len))
  n = FLAGS.new_tokens

  def run(new_tokens):
    start = time.perf_counter()
    engine.generate(list(prompt), max_new_tokens=new_tokens, sampling=GREEDY, stop_token_ids=[])
    return time.perf_counter() - start

  for new_tokens in (n, n // 2, n, n // 2):  # compile both lengths, then warm
    run(new_tokens)
  # Two lengths: the difference removes the prefill and the call overhead.
  long = statistics.median(run(n) for _ in range(FLAGS.rounds))
  short = statistics.median(run(n // 2) for _ in range(FLAGS.rounds))
  step_seconds = (long - short) / (n - n // 2)
  weights = sum(x.nbytes for x in jax.tree.leaves(engine.params))
  if not m.tie_embeddings:
    weights -= m.vocab_size * m.d_model * 2  # embedding rows gathered, not the table
  context = FLAGS.prompt_len + 0.75 * n   # mean context over the timed second half
  kv = 2 * m.num_layers * m.num_kv_heads * m.resolved_head_dim * 2 * context  # bf16 cache
  fraction = (weights + kv) / step_seconds / acc.hbm_bandwidth
  return {"tokens_per_sec": 1 / step_seconds, "step_ms": 1e3 * step_seconds,
          "roofline": fraction}


def main(argv):
  del argv
  acc = accelerators.local_accelerator()
  print(f"{jax.devices()[0].device_kind}: peak {acc.peak_flops / 1e12:.0f} TFLOP/s bf16, "
        f"HBM {acc.hbm_bandwidth / 1e12:.2f} TB/s; jax {jax.__version__}")
  rows = [train_row(int(s), acc) for s in FLAGS.seq_lens]
  print("\n| seq | batch | step ms | tokens/s | MFU (MaxText) | compile s | loss |")
  print("|---:|---:|---:|---:|---:|---:|---:|")
  for r in rows:
    print(f"| {r['seq']} | {r['batch']} | {r['step_ms']:.1f} | {r['tokens_per_sec']:,.0f} | "
          f"{r['mfu']:.1%} | {r['compile_s']:.0f} | {r['loss']:.3f} |")
  d = decode_row(acc)
  print("\n| decode batch 1 | tokens/s | ms/token | HBM roofline |")
  print("|---|---:|---:|---:|")
  print(f"| bf16 weights | {d['tokens_per_sec']:.0f} | {d['step_ms']:.2f} | {d['roofline']:.1%} |")


if __name__ == "__main__":
  app.run(main)
