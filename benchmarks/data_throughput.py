"""Is the input pipeline ever the bottleneck? Pipeline tokens/s beside what training consumes.

  python benchmarks/data_throughput.py                          # the quickstart config
  python benchmarks/data_throughput.py --config=configs/quickstart.py --seconds=10

Both sides run in this process, one after the other, on the config's shapes: the pipeline is
`lm.data.pipeline.train_batches` on the config's source and tokenizer (every process row, the
global batch), timed with each worker setting below after a warm-up batch; training is the
jitted, donated step of `lm train` on one real batch, timed after compilation. The goal: the
pipeline at least 10x faster than training consumes, so that a background thread hides it.
"""

import time

from absl import app
from absl import flags
import jax
import ml_collections
from ml_collections import config_flags

from lm.data import pipeline
from lm.data import sources
from lm.data import tokenizer as tokenizer_lib

import lm_step  # benchmarks/lm_step.py, beside this script

_CONFIG = config_flags.DEFINE_config_file("config", "configs/quickstart.py",
                                          "The training config whose shapes are measured.")
_SECONDS = flags.DEFINE_float("seconds", 5.0, "Time each measurement for about this long.")
# (label, data.num_threads, data.num_workers, data.prefetch)
SETTINGS = [("in-process, no prefetch", 0, 0, 0), ("prefetch thread (default)", 0, 0, 4),
            ("2 reader threads + prefetch", 2, 0, 4), ("2 worker processes + prefetch", 0, 2, 4)]


def pipeline_tokens_per_sec(config: ml_collections.ConfigDict, source, tokenizer) -> float:
  batches = pipeline.train_batches(source.train, tokenizer, config,
                                   slice(0, config.train.batch_size))
  next(batches)  # start-up: threads, worker processes, first reads
  tokens, start = 0, time.perf_counter()
  while time.perf_counter() - start < _SECONDS.value:
    tokens += next(batches)["inputs"].size
  seconds = time.perf_counter() - start
  batches.close()
  return tokens / seconds


def training_tokens_per_sec(config: ml_collections.ConfigDict, batch: dict) -> float:
  step = lm_step.TrainStep(config)
  batch = step.put(batch)
  jax.block_until_ready(step(batch))  # compile
  steps, start = 0, time.perf_counter()
  while time.perf_counter() - start < _SECONDS.value:
    jax.block_until_ready(step(batch))
    steps += 1
  seconds = time.perf_counter() - start
  return steps * config.train.batch_size * config.train.seq_len / seconds


def main(argv):
  del argv
  config = _CONFIG.value
  tokenizer = tokenizer_lib.get(config.data.tokenizer)
  source = sources.open_source(config.data)
  first = pipeline.train_batches(source.train, tokenizer, config,
                                 slice(0, config.train.batch_size))
  trained = training_tokens_per_sec(config, next(first))
  first.close()
  print(f"{config.data.source}, tokenizer {config.data.tokenizer}, batch "
        f"{config.train.batch_size} x {config.train.seq_len}, {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s)")
  print(f"training step consumes {trained:,.0f} tokens/s\n")
  print(f"{'pipeline setting':<32}{'tokens/s':>12}{'x training':>12}")
  print("-" * 56)
  for label, threads, workers, prefetch in SETTINGS:
    variant = ml_collections.ConfigDict(config.to_dict())
    variant.data.num_threads, variant.data.num_workers = threads, workers
    variant.data.prefetch = prefetch
    rate = pipeline_tokens_per_sec(variant, source, tokenizer)
    print(f"{label:<32}{rate:>12,.0f}{rate / trained:>11.1f}x")


if __name__ == "__main__":
  app.run(main)
