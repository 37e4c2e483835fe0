"""Training tokens/s of `lm` (JAX) against Hugging Face `LlamaForCausalLM` (PyTorch).

  python benchmarks/train_throughput.py                  # quickstart and llama-58m
  python benchmarks/train_throughput.py --shapes=quickstart --batch_size=32 --rounds=5
  python benchmarks/train_throughput.py --lm_overrides=scan_layers=False,remat=dots

Both sides train the same Llama shape (RMSNorm, RoPE, GQA, SwiGLU, untied output head) in
float32 on the same [batch_size, seq_len] batch of random tokens, with AdamW (the lr,
betas, eps and weight decay of `base_config().train`, decay on matrices only; HF keeps the lr
constant, lm follows its schedule, which costs nothing) after global-norm clipping at 1.0.
The parameter counts are checked equal before timing.

lm runs exactly what `lm train` runs: `make_optimizer`, the sharded state of
`create_train_state` on the mesh, and `jax.jit(make_train_step(...), donate_argnums=(0,))`
with the pretrain loss. HF runs `model(input_ids, labels=...)`, `loss.backward()`,
`clip_grad_norm_`, `optimizer.step()`, `optimizer.zero_grad()` with SDPA attention and one
torch thread per core this process may use.

Warm-up steps (lm's compilation included) are never timed. Each round times `steps` steps of
lm, then `steps` steps of HF, so background load hits both alike; the table shows medians
over rounds. GFLOP/s use `lm.train.state.flops_per_token` for both sides.
"""

import os
import statistics
import time
from typing import Callable

from absl import app
from absl import flags
import jax
import ml_collections
import numpy as np
import torch
import transformers

from lm import config as config_lib
from lm.model import ModelConfig, presets
from lm.model.config import model_config_fields
from lm.train import state as state_lib

import lm_step  # benchmarks/lm_step.py, beside this script

# Shapes beyond lm's presets: model.* overrides on top of the `tiny` preset.
EXTRA_SHAPES = {
    # 25.7M parameters in the blocks, 58.5M with the two 32000 x 512 tables (Llama 2 vocab).
    "llama-58m": dict(vocab_size=32000, d_model=512, num_layers=8, num_heads=8,
                      num_kv_heads=8, d_ff=1408, max_seq_len=2048),
}

FLAGS = flags.FLAGS
flags.DEFINE_list("shapes", ["quickstart", "llama-58m"],
                  f"lm presets or one of {sorted(EXTRA_SHAPES)}; Llama-architecture only.")
flags.DEFINE_integer("batch_size", 16, "Sequences per step.")
flags.DEFINE_integer("seq_len", 128, "Tokens per sequence.")
flags.DEFINE_integer("steps", 3, "Timed steps per round and side.")
flags.DEFINE_integer("warmup", 2, "Untimed steps per side before the first round.")
flags.DEFINE_integer("rounds", 3, "Timed rounds, lm then HF in each; the table shows medians.")
flags.DEFINE_list("lm_overrides", [],
                  "model.field=value applied to lm only (e.g. scan_layers=False,remat=dots), "
                  "for experiments that do not change the parameters.")
flags.DEFINE_integer("seed", 0, "Seed of the random tokens and of both initialisations.")


def parse_overrides(items: list[str]) -> dict:
  """`field=value` strings -> typed ModelConfig overrides."""
  types = model_config_fields()
  overrides = {}
  for item in items:
    name, _, text = item.partition("=")
    if name not in types or not text:
      raise ValueError(f"--lm_overrides item {item!r} is not field=value for a ModelConfig "
                       f"field; fields: {sorted(types)}")
    if types[name] is bool:
      if text.lower() not in ("true", "false"):
        raise ValueError(f"--lm_overrides {name}={text!r} must be True or False")
      overrides[name] = text.lower() == "true"
    else:
      overrides[name] = types[name](text)
  return overrides


def experiment_config(shape: str, overrides: dict) -> ml_collections.ConfigDict:
  """base_config() with the shape and the benchmark's batch; what `lm train` would get."""
  config = config_lib.base_config()
  config.seed = FLAGS.seed
  if shape in EXTRA_SHAPES:
    config.model.preset = "tiny"
    for name, value in EXTRA_SHAPES[shape].items():
      config.model[name] = value
  else:
    presets.get(shape)  # an unknown name fails here, listing the presets
    config.model.preset = shape
  for name, value in overrides.items():
    config.model[name] = value
  t = config.train
  t.batch_size, t.seq_len = FLAGS.batch_size, FLAGS.seq_len
  t.steps = FLAGS.warmup + FLAGS.rounds * FLAGS.steps
  return config_lib.lock(config)


def hf_config(model: ModelConfig) -> transformers.LlamaConfig:
  """The LlamaConfig with `model`'s hyper-parameters; non-Llama switches are an error."""
  llama = dict(norm="rmsnorm", mlp="swiglu", positions="rope", rope_scaling="none",
               norm_plus_one=False, attention_bias=False, use_bias=False, tie_embeddings=False,
               scale_embeddings=False, sliding_window=0)
  wrong = [f"model.{k}={getattr(model, k)!r} (HF Llama needs {v!r})"
           for k, v in llama.items() if getattr(model, k) != v]
  if wrong:
    raise ValueError("Shape is not a Llama architecture: " + "; ".join(wrong))
  return transformers.LlamaConfig(
      vocab_size=model.vocab_size, hidden_size=model.d_model, intermediate_size=model.d_ff,
      num_hidden_layers=model.num_layers, num_attention_heads=model.num_heads,
      num_key_value_heads=model.num_kv_heads, head_dim=model.resolved_head_dim,
      hidden_act="silu", max_position_embeddings=model.max_seq_len,
      rms_norm_eps=model.norm_eps, initializer_range=model.init_std,
      rope_parameters={"rope_type": "default", "rope_theta": model.rope_theta},
      tie_word_embeddings=False, attention_bias=False, mlp_bias=False, attention_dropout=0.0,
      use_cache=False, attn_implementation="sdpa", dtype=torch.float32)


def lm_trainer(config: ml_collections.ConfigDict, tokens: np.ndarray
               ) -> tuple[Callable[[int], float], int]:
  """(run(n) -> seconds for n steps, parameter count), set up as train_and_evaluate does."""
  step = lm_step.TrainStep(config)
  batch = step.put({"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
                    "loss_mask": np.ones(tokens[:, 1:].shape, np.float32)})

  def run(num_steps: int) -> float:
    start = time.perf_counter()
    for _ in range(num_steps):
      metrics = step(batch)
    jax.block_until_ready((step.state, metrics))
    return time.perf_counter() - start

  return run, state_lib.count_params(step.abstract_state.params)


def hf_trainer(config: ml_collections.ConfigDict, tokens: np.ndarray
               ) -> tuple[Callable[[int], float], int]:
  """(run(n) -> seconds for n steps, parameter count): the plain PyTorch training loop."""
  t = config.train
  torch.manual_seed(config.seed)
  model = transformers.LlamaForCausalLM(hf_config(config_lib.model_config(config)))
  model.train()
  matrices = [p for p in model.parameters() if p.ndim >= 2]
  vectors = [p for p in model.parameters() if p.ndim < 2]
  optimizer = torch.optim.AdamW(
      [{"params": matrices, "weight_decay": t.weight_decay},
       {"params": vectors, "weight_decay": 0.0}],
      lr=t.lr, betas=(t.b1, t.b2), eps=t.eps)
  # HF shifts the labels itself: position i predicts input i + 1, as lm's targets do.
  input_ids = torch.from_numpy(tokens[:, :-1].astype(np.int64))

  def run(num_steps: int) -> float:
    start = time.perf_counter()
    for _ in range(num_steps):
      loss = model(input_ids=input_ids, labels=input_ids).loss
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
      optimizer.step()
      optimizer.zero_grad()
    return time.perf_counter() - start

  return run, sum(p.numel() for p in model.parameters())


def benchmark(shape: str, overrides: dict) -> dict:
  """Times both sides on `shape`, interleaved by rounds; tokens/s and GFLOP/s of the medians."""
  config = experiment_config(shape, overrides)
  t = config.train
  rng = np.random.default_rng(config.seed)
  model = config_lib.model_config(config)
  tokens = rng.integers(0, model.vocab_size, (t.batch_size, t.seq_len + 1), dtype=np.int32)

  run_lm, lm_params = lm_trainer(config, tokens)
  run_hf, hf_params = hf_trainer(config, tokens)
  print(f"{shape}: lm {lm_params:,} parameters, HF {hf_params:,} parameters")
  if lm_params != hf_params:
    raise AssertionError(f"{shape}: parameter counts differ (lm {lm_params:,}, "
                         f"HF {hf_params:,}); the shapes are not the same model")

  compile_seconds = run_lm(1)  # the first step compiles
  print(f"{shape}: lm first step (compile) {compile_seconds:.1f}s")
  run_lm(max(FLAGS.warmup - 1, 0))
  run_hf(FLAGS.warmup)
  lm_seconds, hf_seconds = [], []
  for round_index in range(FLAGS.rounds):
    line = f"{shape}: round {round_index + 1}/{FLAGS.rounds}:"
    for name, run, seconds in (("lm", run_lm, lm_seconds), ("HF", run_hf, hf_seconds)):
      cpu_start = time.process_time()
      seconds.append(run(FLAGS.steps))
      cores = (time.process_time() - cpu_start) / seconds[-1]  # torch counts its spin-waits
      line += f" {name} {seconds[-1] / FLAGS.steps * 1e3:.0f} ms/step ({cores:.1f} cores busy)"
    print(line)

  tokens_per_step = t.batch_size * t.seq_len
  flops_per_token = state_lib.flops_per_token(model, t.seq_len)
  lm_tps = tokens_per_step * FLAGS.steps / statistics.median(lm_seconds)
  hf_tps = tokens_per_step * FLAGS.steps / statistics.median(hf_seconds)
  return {"shape": shape, "params": lm_params, "lm_tps": lm_tps, "hf_tps": hf_tps,
          "lm_gflops": lm_tps * flops_per_token / 1e9,
          "hf_gflops": hf_tps * flops_per_token / 1e9}


def print_table(rows: list[dict]) -> None:
  header = (f"{'shape':<12} {'params':>8} {'lm tok/s':>10} {'HF tok/s':>10} {'lm/HF':>6} "
            f"{'lm GFLOP/s':>11} {'HF GFLOP/s':>11}")
  print(header)
  print("-" * len(header))
  for r in rows:
    print(f"{r['shape']:<12} {r['params'] / 1e6:>7.1f}M {r['lm_tps']:>10,.0f} "
          f"{r['hf_tps']:>10,.0f} {r['lm_tps'] / r['hf_tps']:>6.2f} "
          f"{r['lm_gflops']:>11.1f} {r['hf_gflops']:>11.1f}")


def main(argv) -> None:
  del argv
  # os.cpu_count() unless the process is pinned (`taskset -c 0 python ...` for one core).
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  overrides = parse_overrides(FLAGS.lm_overrides)
  print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), transformers {transformers.__version__}; "
        f"float32, batch {FLAGS.batch_size} x {FLAGS.seq_len} tokens, {FLAGS.steps} steps "
        f"x {FLAGS.rounds} rounds after {FLAGS.warmup} warm-up"
        + (f"; lm overrides {overrides}" if overrides else ""))
  rows = [benchmark(shape, overrides) for shape in FLAGS.shapes]
  print()
  print_table(rows)


if __name__ == "__main__":
  app.run(main)
