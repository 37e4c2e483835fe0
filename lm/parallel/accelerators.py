"""Peak FLOP/s, HBM bandwidth and capacity of the chips we train on: the one table.

The planner (`lm plan`) sizes runs with it; the training loop's MFU divides by its peak.
"""

import dataclasses
import functools
import os
import time

import jax
import jax.numpy as jnp

GiB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Accelerator:
  name: str                  # as printed: "TPU v5p"
  peak_flops: float          # dense bfloat16 FLOP/s per chip
  hbm_bandwidth: float       # bytes/s per chip
  hbm_bytes: float           # per chip
  cores_per_slice_unit: int  # slice names count TensorCores on v4/v5p: v5p-8 is 4 chips
  device_kinds: tuple[str, ...] = ()  # substrings of jax's `device_kind`


# The one table of accelerator numbers (per chip, bfloat16 dense).
ACCELERATORS: dict[str, Accelerator] = {
    "v4": Accelerator("TPU v4", 275e12, 1.2e12, 32 * GiB, 2, ("TPU v4",)),
    "v5e": Accelerator("TPU v5e", 197e12, 819e9, 16 * GiB, 1, ("TPU v5 lite", "TPU v5e")),
    "v5p": Accelerator("TPU v5p", 459e12, 2.76e12, 95 * GiB, 2, ("TPU v5p", "TPU v5")),
    "v6e": Accelerator("TPU v6e", 918e12, 1.64e12, 32 * GiB, 1, ("TPU v6 lite", "TPU v6e")),
    "h100": Accelerator("H100", 989e12, 3.35e12, 80e9, 1, ("H100",)),
    "h200": Accelerator("H200", 989e12, 4.8e12, 141e9, 1, ("H200",)),
    "a100": Accelerator("A100", 312e12, 2.04e12, 80e9, 1, ("A100",)),
}


@functools.cache
def measured_cpu_flops(n: int = 1024, repeats: int = 5) -> float:
  """float32 FLOP/s of this process's CPU devices together, measured: the best of `repeats`
  timed runs of a jitted [n, n] @ [n, n] matmul (about 0.1 s, once per process). A CPU has
  no published peak; this is the rate its matmuls reach now (lower on a loaded machine)."""
  x = jnp.ones((n, n), jnp.float32)
  matmul = jax.jit(lambda a: a @ a)
  matmul(x).block_until_ready()  # compile
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(x).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * n ** 3 / best


def local_accelerator() -> Accelerator:
  """The accelerator of this process's devices; a CPU gets its RAM and its measured matmul
  rate as the peak (shared by the process's CPU devices, which use the same cores)."""
  device = jax.devices()[0]
  if device.platform == "cpu":
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return Accelerator("CPU", measured_cpu_flops() / jax.local_device_count(),
                       float("nan"), ram / jax.local_device_count(), 1, ("cpu",))
  kinds = sorted(((kind, acc) for acc in ACCELERATORS.values() for kind in acc.device_kinds),
                 key=lambda item: -len(item[0]))  # "TPU v5 lite" before "TPU v5"
  for kind, acc in kinds:
    if kind.lower() in device.device_kind.lower():
      return acc
  raise ValueError(f"The local devices ({device.device_kind!r}) are not in the table; pass "
                   f"--accelerator=one of {sorted(ACCELERATORS)}")
