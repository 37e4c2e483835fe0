"""Peak FLOP/s, HBM bandwidth and capacity of the chips we train on: the one table.

The planner (`lm plan`) sizes runs with it; the training loop's MFU divides by its peak.
The data-center network (DCN) bandwidth per host bounds what crosses slices (Multislice);
it is NaN where the vendor publishes none for the machine.
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
  chips_per_host: int = 1    # chips one host (one DCN network endpoint) drives
  dcn_bandwidth: float = float("nan")  # bytes/s per host over the data-center network

  @property
  def platform(self) -> str:
    """jax's backend name for it: "tpu", "gpu" or "cpu" (which attention kernel runs)."""
    return "tpu" if self.name.startswith("TPU") else "cpu" if self.name == "CPU" else "gpu"


# The one table of accelerator numbers (per chip, bfloat16 dense). DCN per host, from the
# Cloud TPU system-architecture pages (2026-11):
#   v5p  https://cloud.google.com/tpu/docs/v5p: "Data center network (DCN) bandwidth per
#        chip (Gbps) 50", 4 chips per host: 200 Gbit/s = 25 GB/s per host.
#   v5e, v6e  https://cloud.google.com/tpu/docs/v6e: "Per-host NIC configuration" 2 x 100
#        Gbps (v5e), 4 x 200 Gbps (v6e), 8 chips per host: 25 GB/s and 100 GB/s per host.
#   v4 and the GPUs: no per-host DCN figure is published there (NaN: the planner says unknown).
Gbit = 1e9 / 8  # bytes/s in one Gbit/s
ACCELERATORS: dict[str, Accelerator] = {
    "v4": Accelerator("TPU v4", 275e12, 1.2e12, 32 * GiB, 2, ("TPU v4",), chips_per_host=4),
    "v5e": Accelerator("TPU v5e", 197e12, 819e9, 16 * GiB, 1, ("TPU v5 lite", "TPU v5e"),
                       chips_per_host=8, dcn_bandwidth=2 * 100 * Gbit),
    "v5p": Accelerator("TPU v5p", 459e12, 2.76e12, 95 * GiB, 2, ("TPU v5p", "TPU v5"),
                       chips_per_host=4, dcn_bandwidth=4 * 50 * Gbit),
    "v6e": Accelerator("TPU v6e", 918e12, 1.64e12, 32 * GiB, 1, ("TPU v6 lite", "TPU v6e"),
                       chips_per_host=8, dcn_bandwidth=4 * 200 * Gbit),
    "h100": Accelerator("H100", 989e12, 3.35e12, 80e9, 1, ("H100",), chips_per_host=8),
    "h200": Accelerator("H200", 989e12, 4.8e12, 141e9, 1, ("H200",), chips_per_host=8),
    "a100": Accelerator("A100", 312e12, 2.04e12, 80e9, 1, ("A100",), chips_per_host=8),
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
