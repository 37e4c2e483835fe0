"""Which presets fit which TPU / GPU slices, from `lm plan`'s analytic model (no devices needed).

  python experiments/planner/fit_table.py

Every row trains on a global batch of 256 sequences x 4096 tokens, bfloat16 compute, AdamW,
fully sharded (mesh.fsdp = every chip). For each model and slice it takes the cheapest
setting that fits in 90% of HBM (the planner agrees with XLA to about 10% on CPU, float32):
remat 'dots' before 'full' (less recomputation), then the fewest micro-batches.
"""

import sys

from lm import config as config_lib
from lm import plan as plan_lib

BATCH, SEQ_LEN, HEADROOM = 256, 4096, 0.9

SLICES = [
    ("llama3-8b", ["v5p-8", "v5p-32", "v4-32", "v5e-16", "v6e-8", "h100-8"]),
    ("llama3-70b", ["v5p-64", "v5p-128", "v6e-64", "h100-64"]),
    ("mistral-7b", ["v5p-8", "v5e-16", "v6e-8"]),
    ("qwen2-0.5b", ["v5e-1", "v5e-4", "v6e-4", "h100-1"]),
    ("gemma-2b", ["v5e-8", "v6e-4", "v5p-8"]),
]


def make_config(preset: str, remat: str, grad_accum: int):
  config = config_lib.base_config()
  config.model.preset = preset
  config.model.remat, config.model.dtype = remat, "bfloat16"
  config.train.batch_size, config.train.seq_len = BATCH, SEQ_LEN
  config.train.grad_accum, config.train.optimizer = grad_accum, "adamw"
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, -1, 1
  return config_lib.lock(config)


def best_plan(preset: str, accelerator: str) -> plan_lib.Plan:
  """The first setting that fits in HEADROOM of HBM, else the smallest one tried."""
  tried = []
  for remat in ("dots", "full"):
    accum = 1
    while True:
      try:
        plan = plan_lib.plan(make_config(preset, remat, accum), accelerator, compile_step=False)
      except ValueError:  # the micro-batch no longer splits over the chips
        break
      if plan.total <= HEADROOM * plan.accelerator.hbm_bytes:
        return plan
      tried.append(plan)
      accum *= 2
  return min(tried, key=lambda p: p.total)


def main() -> None:
  gib = plan_lib.GiB
  header = ("| model | slice | chips | remat | grad_accum | seqs/chip/micro-batch | "
            "state GiB | activations GiB | total GiB | HBM GiB | fits | step at 40% MFU | "
            "HBM-traffic bound |")
  print(header)
  print("|" + "---|" * header.count(" |"))
  for preset, slices in SLICES:
    for accelerator in slices:
      p = best_plan(preset, accelerator)
      state = p.params + p.gradients + p.optimizer_state
      fits = "yes" if p.total <= HEADROOM * p.accelerator.hbm_bytes else "no"
      print(f"| {preset} | {accelerator} | {p.num_devices} | {p.model.remat} | "
            f"{p.grad_accum} | {p.micro_batch} | {state / gib:.1f} | "
            f"{p.activations.total / gib:.1f} | {p.total / gib:.1f} | "
            f"{p.accelerator.hbm_bytes / gib:.0f} | {fits} | "
            f"{p.compute_seconds / plan_lib.REALISTIC_MFU:.1f} s | {p.hbm_seconds:.2f} s |")
      sys.stdout.flush()


if __name__ == "__main__":
  main()
