"""The share of each training step spent outside the jitted step: input, transfer, metrics.

  python benchmarks/loop_overhead.py                    # configs/quickstart.py at 16 x 128
  python benchmarks/loop_overhead.py --steps=40 --rounds=5 --config.train.batch_size=32

The same steps of the same config, run two ways and interleaved round by round, so that
background load hits both alike:

- loop: `lm train` itself (`lm.stages.train_and_evaluate` in a fresh workdir). Each step
  takes the next batch from the input pipeline (a background thread prepares them), makes it
  a global array (`make_array_from_process_local_data`), dispatches the jitted, donated
  step and the stage's between-steps hook; the loop's own timer (its one log, at the last
  step; the compiling first step left out) gives seconds per step, what the progress line's
  tokens/s reads.
- step: the same jitted, donated step (benchmarks/lm_step.py) back to back on one batch
  already on the device: the step alone.

    outside share = 1 - step seconds / loop seconds

The pipeline alone (next batch from `lm.data.pipeline.train_batches`, same config) is printed
beside them: the loop hides it behind the step while it is the shorter of the two. Every
round compiles the loop's step again (a fresh `lm train`); compile time is never timed.
"""

import statistics
import tempfile
import time

from absl import app
from absl import flags
import jax
import ml_collections
import numpy as np
from ml_collections import config_flags

from lm import stages
from lm.data import pipeline
from lm.data import sources
from lm.data import tokenizer as tokenizer_lib

import lm_step  # benchmarks/lm_step.py, beside this script

_CONFIG = config_flags.DEFINE_config_file("config", "configs/quickstart.py",
                                          "The training config whose loop is measured.")
_STEPS = flags.DEFINE_integer("steps", 30, "Timed steps per round and side (after 1 compiling).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Rounds, loop then step in each; medians shown.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "train.batch_size (the throughput benchmark's).")


def measured_config() -> ml_collections.ConfigDict:
  """The config with the benchmark's batch, one log (the last step), no evaluation or
  checkpoint before it."""
  config = ml_collections.ConfigDict(_CONFIG.value.to_dict())
  t = config.train
  t.batch_size = _BATCH.value
  t.steps = _STEPS.value + 1
  t.log_every = t.eval_every = t.checkpoint_every = t.steps
  config.data.eval_documents = 1
  return config


def loop_seconds_per_step(config: ml_collections.ConfigDict) -> float:
  with tempfile.TemporaryDirectory() as workdir:
    metrics = stages.train_and_evaluate(config, workdir)
  return config.train.batch_size * config.train.seq_len / metrics["tokens_per_sec"]


def step_seconds_per_step(step: lm_step.TrainStep, batch: dict) -> float:
  jax.block_until_ready(step(batch))
  start = time.perf_counter()
  for _ in range(_STEPS.value):
    metrics = step(batch)
  jax.block_until_ready((step.state, metrics))
  return (time.perf_counter() - start) / _STEPS.value


def pipeline_seconds_per_batch(config: ml_collections.ConfigDict) -> float:
  tokenizer = tokenizer_lib.get(config.data.tokenizer)
  source = sources.open_source(config.data)
  batches = pipeline.train_batches(source.train, tokenizer, config,
                                   slice(0, config.train.batch_size))
  next(batches)  # start-up
  start = time.perf_counter()
  for _ in range(_STEPS.value):
    next(batches)
  seconds = (time.perf_counter() - start) / _STEPS.value
  batches.close()
  return seconds


def main(argv):
  del argv
  config = measured_config()
  t = config.train
  step = lm_step.TrainStep(config)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 256, (t.batch_size, t.seq_len + 1)).astype(np.int32)
  batch = step.put({"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
                    "loss_mask": np.ones((t.batch_size, t.seq_len), np.float32)})
  print(f"{_CONFIG.value.model.preset}, batch {t.batch_size} x {t.seq_len}, {_STEPS.value} "
        f"steps x {_ROUNDS.value} rounds; {jax.device_count()} {jax.devices()[0].platform} "
        "device(s)")
  loops, steps = [], []
  for i in range(_ROUNDS.value):
    loops.append(loop_seconds_per_step(config))
    steps.append(step_seconds_per_step(step, batch))
    print(f"round {i + 1}: loop {loops[-1] * 1e3:.1f} ms/step, step alone "
          f"{steps[-1] * 1e3:.1f} ms/step, outside {1 - steps[-1] / loops[-1]:.1%}")
  loop, alone = statistics.median(loops), statistics.median(steps)
  input_seconds = pipeline_seconds_per_batch(config)
  print(f"\nmedians: loop {loop * 1e3:.1f} ms/step, jitted step {alone * 1e3:.1f} ms/step: "
        f"{1 - alone / loop:.1%} of the loop's step outside the jitted step "
        f"({(loop - alone) * 1e3:.1f} ms)")
  print(f"input pipeline alone: {input_seconds * 1e3:.2f} ms/batch "
        f"({input_seconds / alone:.1%} of the step; the loop's prefetch thread overlaps it)")


if __name__ == "__main__":
  app.run(main)
