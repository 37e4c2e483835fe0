"""Decoding tokens/s of the `lm` engine (JAX) against Hugging Face `generate` (PyTorch).

  python benchmarks/decode_throughput.py                    # quickstart and llama-100m, batch 1, 16
  python benchmarks/decode_throughput.py --shapes=quickstart --batch_sizes=1 --rounds=5
  python benchmarks/decode_throughput.py --shapes=workdir:$(lm fetch smollm2-135m-instruct)

Both sides decode the same model with the same weights: lm's random initialisation (or,
for a shape `workdir:DIR`, the parameters of an lm workdir such as an imported real model),
exported with `lm.interop.hf_export.save` and loaded by `transformers.LlamaForCausalLM` (float32,
SDPA attention, `torch.set_num_threads(os.cpu_count())` unless --hf_threads says otherwise). Each batch row is a prompt of
`prompt_len` random tokens; both generate exactly `new_tokens` tokens greedily (lm: no stop
tokens; HF: `min_new_tokens=max_new_tokens`), timed end to end, prompt processing
included. The greedy tokens of the two are compared as a check that they run one model.

lm runs `Engine.generate`: one jitted prefill, then one `lax.while_loop` over the tokens.
HF runs `model.generate(..., do_sample=False)` with its KV cache. Warm-up calls (lm's
compilation included) are never timed; each round times lm then HF, and the table shows
medians over rounds.

Roofline: a decode step must read every weight matrix once (the embedding table only when
tied) and each row's keys and values so far. That many bytes per step times steps per second,
over the machine's memory bandwidth, is the fraction of the memory-bandwidth roofline
reached. The bandwidth is measured here, as the best of several numpy copies of a 512 MiB
array (bytes read + written per second, one thread). The fraction is shown only for
weights larger than any CPU cache (64 MiB); smaller models run from cache, bound by
per-step overheads instead.
"""

import os
import statistics
import tempfile
import time

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from lm.data.tokenizer import ByteTokenizer
from lm.infer.engine import Engine
from lm.infer.sampling import GREEDY
from lm.interop import hf_export
from lm.model import Decoder, ModelConfig, presets
from lm.train import state as state_lib

# Shapes beyond lm's presets: overrides on top of the `tiny` preset.
EXTRA_SHAPES = {
    # 102M parameters: 61M in 12 blocks, 41M in the two 32000 x 640 tables (Llama 2 vocab).
    "llama-100m": dict(vocab_size=32000, d_model=640, num_layers=12, num_heads=10,
                       num_kv_heads=10, d_ff=1792, max_seq_len=2048),
}
CACHE_BYTES = 64 << 20  # weights below this fit in a CPU's caches: no memory roofline

FLAGS = flags.FLAGS
flags.DEFINE_list("shapes", ["quickstart", "llama-100m"],
                  f"lm presets, one of {sorted(EXTRA_SHAPES)}, or workdir:DIR (an lm workdir's "
                  "parameters); Llama-architecture only.")
flags.DEFINE_list("batch_sizes", ["1", "16"], "Rows decoded together.")
flags.DEFINE_integer("prompt_len", 32, "Tokens per prompt.")
flags.DEFINE_integer("new_tokens", 128, "Tokens generated per row.")
flags.DEFINE_integer("rounds", 3, "Timed rounds; the table shows the median.")
flags.DEFINE_integer("seed", 0, "Seed of the weights and the prompts.")
flags.DEFINE_integer("hf_threads", None, "torch threads; default os.cpu_count(). On a machine "
                     "that other jobs load, fewer threads can be much faster for PyTorch.")


def model_config(shape: str) -> ModelConfig:
  if shape in EXTRA_SHAPES:
    return presets.get("tiny").replace(**EXTRA_SHAPES[shape])
  return presets.get(shape)


def memory_bandwidth() -> float:
  """Bytes per second of a large numpy copy (read + write), best of five."""
  src = np.ones(512 << 20 >> 2, np.float32)
  dst = np.empty_like(src)
  best = float("inf")
  for _ in range(5):
    start = time.perf_counter()
    np.copyto(dst, src)
    best = min(best, time.perf_counter() - start)
  return 2 * src.nbytes / best


def bytes_per_step(config: ModelConfig, params, batch: int) -> float:
  """Weights read once per step, plus every row's keys and values at the mean context."""
  weights = sum(x.nbytes for x in jax.tree.leaves(params))
  if not config.tie_embeddings:
    weights -= config.vocab_size * config.d_model * 4  # rows gathered, not the whole table
  context = FLAGS.prompt_len + FLAGS.new_tokens / 2
  kv = 2 * config.num_layers * config.num_kv_heads * config.resolved_head_dim * 4 * context
  return weights + batch * kv


def hf_model(config: ModelConfig, params) -> transformers.PreTrainedModel:
  """lm's parameters as a transformers model, through lm's own exporter."""
  with tempfile.TemporaryDirectory() as directory:
    hf_export.save(directory, config, params)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32, attn_implementation="sdpa")
  return model.eval()


def model_and_params(shape: str):
  """(ModelConfig, params): a workdir's, or a shape's at random initialisation."""
  if shape.startswith("workdir:"):
    from lm.train.checkpoint import load_for_inference  # pylint: disable=import-outside-toplevel
    _, config, params = load_for_inference(shape[len("workdir:"):])
    return config, params
  config = model_config(shape)
  return config, nn.unbox(jax.jit(Decoder(config).init)(jax.random.key(FLAGS.seed),
                                                        jnp.zeros((1, 8), jnp.int32))["params"])


def benchmark(shape: str, bandwidth: float) -> list[dict]:
  config, params = model_and_params(shape)
  shape = os.path.basename(os.path.dirname(shape)) if shape.startswith("workdir:") else shape
  engine = Engine(config, params, ByteTokenizer())
  model = hf_model(config, params)
  lm_count = state_lib.count_params(params)
  hf_count = sum(p.numel() for p in model.parameters())
  print(f"{shape}: lm {lm_count:,} parameters, HF {hf_count:,} parameters")
  if lm_count != hf_count:
    raise AssertionError(f"{shape}: parameter counts differ; not the same model")

  rows = []
  rng = np.random.default_rng(FLAGS.seed)
  n = FLAGS.new_tokens
  for batch in map(int, FLAGS.batch_sizes):
    prompts = rng.integers(0, min(config.vocab_size, 256), (batch, FLAGS.prompt_len))
    input_ids = torch.from_numpy(prompts.astype(np.int64))

    def run_lm():
      start = time.perf_counter()
      out = engine.generate(list(prompts), max_new_tokens=n, sampling=GREEDY,
                            stop_token_ids=[])
      return time.perf_counter() - start, np.array([c.tokens for c in out])

    def run_hf(new_tokens=n):
      start = time.perf_counter()
      with torch.inference_mode():
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                             do_sample=False, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, pad_token_id=0)
      return time.perf_counter() - start, out[:, FLAGS.prompt_len:].numpy()

    compile_seconds, _ = run_lm()
    run_hf(16)
    lm_seconds, hf_seconds = [], []
    for round_index in range(FLAGS.rounds):
      seconds, lm_tokens = run_lm()
      lm_seconds.append(seconds)
      seconds, hf_tokens = run_hf()
      hf_seconds.append(seconds)
      print(f"{shape} batch {batch}: round {round_index + 1}/{FLAGS.rounds}: "
            f"lm {lm_seconds[-1]:.2f}s, HF {hf_seconds[-1]:.2f}s "
            f"(lm compile + first call {compile_seconds:.1f}s)")
    # Greedy decoding of one model: the tokens agree until float noise breaks a near-tie.
    agree = np.cumprod(lm_tokens == hf_tokens, axis=1).sum(axis=1).mean() / n
    lm_tps = batch * n / statistics.median(lm_seconds)
    hf_tps = batch * n / statistics.median(hf_seconds)
    step_bytes = bytes_per_step(config, params, batch)
    weights_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    roofline = (lambda tps: step_bytes * tps / batch / bandwidth
                if weights_bytes >= CACHE_BYTES else float("nan"))
    rows.append({"shape": shape, "params": lm_count, "batch": batch, "lm_tps": lm_tps,
                 "hf_tps": hf_tps, "lm_roofline": roofline(lm_tps),
                 "hf_roofline": roofline(hf_tps), "agree": agree})
  return rows


def print_table(rows: list[dict]) -> None:
  header = (f"{'shape':<12} {'params':>8} {'batch':>5} {'lm tok/s':>10} {'HF tok/s':>10} "
            f"{'lm/HF':>7} {'lm roofline':>11} {'HF roofline':>11} {'greedy agree':>12}")
  print(header)
  print("-" * len(header))
  percent = lambda x: "-" if np.isnan(x) else f"{100 * x:.0f}%"
  for r in rows:
    print(f"{r['shape']:<12} {r['params'] / 1e6:>7.1f}M {r['batch']:>5} {r['lm_tps']:>10,.0f} "
          f"{r['hf_tps']:>10,.1f} {r['lm_tps'] / r['hf_tps']:>6.1f}x "
          f"{percent(r['lm_roofline']):>11} {percent(r['hf_roofline']):>11} "
          f"{100 * r['agree']:>11.0f}%")


def main(argv) -> None:
  del argv
  torch.set_num_threads(FLAGS.hf_threads or os.cpu_count())
  bandwidth = memory_bandwidth()
  print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), transformers {transformers.__version__}; "
        f"float32, greedy, {FLAGS.prompt_len} prompt + {FLAGS.new_tokens} new tokens per row, "
        f"{FLAGS.rounds} rounds; memory bandwidth (numpy copy) {bandwidth / 1e9:.1f} GB/s")
  rows = [row for shape in FLAGS.shapes for row in benchmark(shape, bandwidth)]
  print()
  print_table(rows)


if __name__ == "__main__":
  app.run(main)
