"""The device mesh (data, fsdp, tensor) from `config.mesh`, and joining a multi-host job."""

import math
import os

import jax
from jax.sharding import AxisType, Mesh

AXES = ("data", "fsdp", "tensor")


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, int, int]:
  """Sizes of (data, fsdp, tensor); one of them may be -1 for "the remaining devices"."""
  sizes = [int(mesh_config[axis]) for axis in AXES]
  free = [axis for axis, size in zip(AXES, sizes) if size == -1]
  bad = [f"mesh.{axis}={size}" for axis, size in zip(AXES, sizes) if size == 0 or size < -1]
  if bad or len(free) > 1:
    raise ValueError(f"Invalid mesh: {', '.join(bad) or 'more than one axis is -1'}; "
                     "sizes must be positive, and at most one of them -1")
  fixed = math.prod(size for size in sizes if size != -1)
  if free:
    if num_devices % fixed:
      raise ValueError(f"mesh.{free[0]}=-1 cannot fill {num_devices} devices: the other axes "
                       f"multiply to {fixed}, which does not divide {num_devices}")
    sizes[AXES.index(free[0])] = num_devices // fixed
  elif fixed != num_devices:
    raise ValueError(f"mesh.data * mesh.fsdp * mesh.tensor = {fixed} but there are "
                     f"{num_devices} devices; make the product equal, or set one axis to -1")
  return tuple(sizes)


def make_mesh(mesh_config, devices=None) -> Mesh:
  """A mesh with Auto axis types, so logical sharding constraints steer the compiler."""
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_config, len(devices))
  return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def _launched_as_cluster() -> bool:
  """True inside a multi-task SLURM step or a GKE TPU pod, where JAX finds its peers itself."""
  slurm = "SLURM_STEP_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1
  return slurm or "TPU_WORKER_HOSTNAMES" in os.environ


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None, force: bool = False) -> None:
  """Joins the multi-host job: from explicit flags, or auto-detected (`force`, SLURM, GKE).

  On Cloud TPU VM slices JAX detects the workers through the metadata server, which has no
  environment variable to look for: `lm train --distributed` asks for it (tpu_scripts do).
  On CPU the processes exchange data through gloo collectives (tests and laptops).
  """
  if coordinator_address is None and not force and not _launched_as_cluster():
    return  # a single process
  if coordinator_address is not None and (num_processes is None or process_id is None):
    raise ValueError("--coordinator_address needs --num_processes and --process_id too")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only CPU devices use it
  jax.distributed.initialize(coordinator_address, num_processes, process_id)
