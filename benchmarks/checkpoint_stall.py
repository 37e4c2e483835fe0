"""Does an async checkpoint stall training? Step times around a save, against a blocking save.

  python benchmarks/checkpoint_stall.py                          # a 58M-parameter Llama
  python benchmarks/checkpoint_stall.py --preset=quickstart --saves=5

Sets up the state and jitted step exactly as `lm train` does, then per save: times
`checkpoint.save` (what the loop waits for: the device-to-host copy) and the training steps
that follow while Orbax writes in the background. The reference is the same save waited for
at once (a synchronous checkpoint).
"""

import statistics
import tempfile
import time

from absl import app
from absl import flags
import jax
import numpy as np

from lm import config as config_lib
from lm.train import checkpoint as checkpoint_lib
from lm.train import state as state_lib

import lm_step  # benchmarks/lm_step.py, beside this script

_PRESET = flags.DEFINE_string("preset", "llama-58m", "An lm preset, or llama-58m.")
_SAVES = flags.DEFINE_integer("saves", 3, "Saves measured (each async, then each blocking).")
_STEPS = flags.DEFINE_integer("steps_between", 6, "Training steps after each save.")


def make_config():
  config = config_lib.base_config()
  if _PRESET.value == "llama-58m":  # as in benchmarks/train_throughput.py
    config.model.preset = "quickstart"
    for field, value in dict(d_model=512, num_layers=8, num_heads=8, num_kv_heads=8, d_ff=1408,
                             vocab_size=32000, max_seq_len=128).items():
      config.model[field] = value
  else:
    config.model.preset = _PRESET.value
  config.train.batch_size, config.train.seq_len = 8, 128
  return config_lib.lock(config)


def main(argv):
  del argv
  config = make_config()
  t = config.train
  step = lm_step.TrainStep(config)
  abstract = step.abstract_state
  tokens = np.random.default_rng(0).integers(0, 256, (t.batch_size, t.seq_len + 1), np.int32)
  batch = step.put({"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
                    "loss_mask": np.ones((t.batch_size, t.seq_len), np.float32)})
  workdir = tempfile.mkdtemp(prefix="lm_checkpoint_stall_")
  manager = checkpoint_lib.make_manager(workdir, keep=2)

  def train(n: int) -> list[float]:
    times = []
    for _ in range(n):
      start = time.perf_counter()
      jax.block_until_ready(step(batch))
      times.append(time.perf_counter() - start)
    return times

  train(2)  # compile
  quiet = train(_STEPS.value)
  rows = {"async": [], "blocking": []}
  for mode in rows:
    for _ in range(_SAVES.value):
      start = time.perf_counter()
      checkpoint_lib.save(manager, step.state, {"fingerprint": {}, "streams": {}}, {})
      blocked = time.perf_counter() - start
      if mode == "blocking":
        manager.wait_until_finished()
        blocked = time.perf_counter() - start
      during = train(_STEPS.value)
      manager.wait_until_finished()
      rows[mode].append((blocked, statistics.median(during), max(during)))
  manager.close()

  size = state_lib.count_bytes(abstract) / 1e6
  step = statistics.median(quiet)
  print(f"{_PRESET.value}: {state_lib.count_params(abstract.params) / 1e6:.1f}M parameters, "
        f"checkpoint {size:.0f} MB, {jax.device_count()} {jax.devices()[0].platform} device(s), "
        f"workdir {workdir}")
  print(f"training step without a save: {1e3 * step:.0f} ms (median of {len(quiet)})\n")
  print(f"{'save':<10}{'training waits':>16}{'median step after':>19}{'slowest step':>14}")
  print("-" * 59)
  for mode, values in rows.items():
    blocked, during, slowest = (statistics.median(v) for v in zip(*values))
    print(f"{mode:<10}{1e3 * blocked:>13.0f} ms{1e3 * during:>16.0f} ms{1e3 * slowest:>11.0f} ms")
  ratio = statistics.median(r[0] for r in rows["blocking"]) / statistics.median(
      r[0] for r in rows["async"])
  print(f"\ntraining waits {ratio:.1f}x less for an async save than for a blocking one")


if __name__ == "__main__":
  app.run(main)
