"""Rollout speed from the train state's scanned parameters against a per-layer copy made
inside the rollout's jit (lm/rl/rollout.py, `rl.rollout_layout`).

    python experiments/rl/rollout_layouts.py [--repeats=5]

For each model shape: compile both, then time `repeats` rollouts of B=128 completions
(P=24 prompt, N=16 new tokens, temperature 1) and print the median seconds and generated
tokens per second, and the bytes of the copy the unrolled layout makes. CPU timings on a
shared machine are noisy: compare the two columns of one line, not lines across runs.
"""

import argparse
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

# pylint: disable=wrong-import-position
import flax.linen as nn
import jax
import numpy as np

from lm.model import Decoder, presets
from lm.parallel import mesh as mesh_lib
from lm.parallel import rules as rules_lib
from lm.rl import rollout
from lm.train import state as state_lib

SHAPES = {"tiny (d64, L2)": dict(),
          "sft_tasks (d192, L4)": dict(d_model=192, num_layers=4, num_heads=6, d_ff=512),
          "d512, L8": dict(d_model=512, num_layers=8, num_heads=8, num_kv_heads=4, d_ff=1536)}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  rng = np.random.default_rng(0)
  prompts, start = rollout.left_pad([list(rng.integers(1, 256, int(n)))
                                     for n in rng.integers(8, 24, 128)], 24)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules_lib.DEFAULT_RULES):
    for name, changes in SHAPES.items():
      config = presets.get("tiny").replace(**changes)
      params = nn.unbox(state_lib.init_params(Decoder(config), jax.random.key(0)))
      copy_bytes = state_lib.count_bytes(params["layers"])
      line = [f"{name:22s}"]
      for layout in rollout.LAYOUTS:
        settings = rollout.Settings(max_new_tokens=16, layout=layout)
        fn = jax.jit(functools.partial(rollout.generate, config, settings))
        jax.block_until_ready(fn(params, prompts, start, jax.random.key(0)))
        times = []
        for i in range(args.repeats):
          begin = time.perf_counter()
          out = jax.block_until_ready(fn(params, prompts, start, jax.random.key(i + 1)))
          times.append(time.perf_counter() - begin)
        seconds = float(np.median(times))
        line.append(f"{layout} {seconds * 1e3:7.1f} ms ({int(out.length.sum()) / seconds:7.0f} tok/s)")
      line.append(f"copy {copy_bytes / 2**20:.1f} MiB")
      print(" | ".join(line), flush=True)


if __name__ == "__main__":
  main()
