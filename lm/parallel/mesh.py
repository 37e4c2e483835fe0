"""The device mesh (data, fsdp, tensor) from `config.mesh`, and joining a multi-host job.

Two levels: `mesh.data/fsdp/tensor` lay out the devices of one slice (chips joined by ICI),
`mesh.dcn_data/dcn_fsdp` the slices (joined by the slower data-center network). A DCN axis
multiplies its mesh axis, so the mesh keeps the three axis names, and the logical rules and
shardings do not change: slice-major, `data` = dcn_data x data. On TPU the slices are the
devices' `slice_index`; on CPU and GPU each process is one "slice" once a DCN axis is > 1.
"""

import math
import os

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

AXES = ("data", "fsdp", "tensor")
DCN_AXES = ("dcn_data", "dcn_fsdp", None)  # the DCN factor of each of AXES (tensor: none)


def dcn_shape(mesh_config, num_slices: int = 1) -> tuple[int, int, int]:
  """Sizes of the DCN factors of (data, fsdp, tensor); their product is the slice count."""
  sizes = [int(mesh_config.get(name, 1)) if name else 1 for name in DCN_AXES]
  bad = [f"mesh.{name}={size}" for name, size in zip(DCN_AXES, sizes) if size < 1]
  if bad:
    raise ValueError(f"Invalid mesh: {', '.join(bad)}; DCN axis sizes must be positive")
  if math.prod(sizes) != num_slices:
    raise ValueError(f"mesh.dcn_data * mesh.dcn_fsdp = {math.prod(sizes)} but there "
                     f"{'is 1 slice' if num_slices == 1 else f'are {num_slices} slices'}; "
                     "make the product the number of slices (one process is one slice on "
                     "CPU and GPU)")
  return tuple(sizes)


def ici_shape(mesh_config, devices_per_slice: int,
              num_slices: int = 1) -> tuple[int, int, int]:
  """Sizes of (data, fsdp, tensor) within a slice; one may be -1 for "the remaining devices"."""
  sizes = [int(mesh_config[axis]) for axis in AXES]
  free = [axis for axis, size in zip(AXES, sizes) if size == -1]
  bad = [f"mesh.{axis}={size}" for axis, size in zip(AXES, sizes) if size == 0 or size < -1]
  if bad or len(free) > 1:
    raise ValueError(f"Invalid mesh: {', '.join(bad) or 'more than one axis is -1'}; "
                     "sizes must be positive, and at most one of them -1")
  fixed = math.prod(size for size in sizes if size != -1)
  where = (f"{devices_per_slice} devices" if num_slices == 1 else
           f"{devices_per_slice} devices in each of {num_slices} slices")
  if free:
    if devices_per_slice % fixed:
      raise ValueError(f"mesh.{free[0]}=-1 cannot fill {where}: the other axes "
                       f"multiply to {fixed}, which does not divide {devices_per_slice}")
    sizes[AXES.index(free[0])] = devices_per_slice // fixed
  elif fixed != devices_per_slice:
    raise ValueError(f"mesh.data * mesh.fsdp * mesh.tensor = {fixed} but there are "
                     f"{where}; make the product equal, or set one axis to -1")
  return tuple(sizes)


def mesh_shape(mesh_config, num_devices: int, num_slices: int = 1) -> tuple[int, int, int]:
  """Sizes of the (data, fsdp, tensor) mesh axes over every slice: ICI x DCN."""
  dcn = dcn_shape(mesh_config, num_slices)
  if num_devices % num_slices:
    raise ValueError(f"{num_devices} devices do not split into {num_slices} equal slices")
  ici = ici_shape(mesh_config, num_devices // num_slices, num_slices)
  return tuple(i * d for i, d in zip(ici, dcn))


def count_slices(devices, multislice: bool) -> int:
  """Slices among `devices`: TPU slices by `slice_index`; elsewhere the processes, when the
  config asks for more than one slice (`multislice`), else 1."""
  if devices[0].platform == "tpu":
    return len({getattr(d, "slice_index", 0) for d in devices})
  return len({d.process_index for d in devices}) if multislice else 1


def make_mesh(mesh_config, devices=None) -> Mesh:
  """A mesh with Auto axis types, so logical sharding constraints steer the compiler.

  More than one slice: `create_hybrid_device_mesh` puts each slice's devices in one block of
  the DCN axes, laid out within it by the ICI topology.
  """
  devices = jax.devices() if devices is None else devices
  multislice = math.prod(int(mesh_config.get(n, 1)) for n in DCN_AXES if n) != 1
  num_slices = count_slices(devices, multislice)
  dcn = dcn_shape(mesh_config, num_slices)
  ici = ici_shape(mesh_config, len(devices) // num_slices, num_slices)
  axis_types = (AxisType.Auto,) * len(AXES)
  if num_slices == 1:
    return jax.make_mesh(ici, AXES, axis_types=axis_types, devices=devices)
  device_array = mesh_utils.create_hybrid_device_mesh(
      ici, dcn, devices=devices, process_is_granule=devices[0].platform != "tpu")
  return Mesh(np.asarray(device_array), AXES, axis_types=axis_types)


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
  Across slices (Multislice) it reads the MEGASCALE_* variables as well: the slice count,
  this slice's index and the coordinator, worker 0 of slice 0.
  On CPU the processes exchange data through gloo collectives (tests and laptops).
  """
  if coordinator_address is None and not force and not _launched_as_cluster():
    return  # a single process
  if coordinator_address is not None and (num_processes is None or process_id is None):
    raise ValueError("--coordinator_address needs --num_processes and --process_id too")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only CPU devices use it
  jax.distributed.initialize(coordinator_address, num_processes, process_id)
