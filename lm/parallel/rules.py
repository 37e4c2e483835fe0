"""Logical axis names (used by the model) -> mesh axes (data, fsdp, tensor).

The model never names a mesh axis. This table is the one place that decides the layout:
batch over data and fsdp, weights' embed dimension over fsdp (ZeRO-3 style), heads, MLP
and vocabulary over tensor. A config changes single entries with `mesh.rules`, e.g.
`--config.mesh.rules="kv_heads=,vocab=fsdp+tensor"` (empty: replicated; `+` joins axes).
"""

import math
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = tuple[tuple[str, Any], ...]

DEFAULT_RULES: Rules = (
    ("act_batch", ("data", "fsdp")),
    ("act_len", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),  # the key/value cache of decoding
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),
)

MESH_AXES = ("data", "fsdp", "tensor")

# The config field behind each logical axis of a parameter, for error messages.
AXIS_FIELDS = {"embed": "model.d_model", "vocab": "model.vocab_size",
               "heads": "model.num_heads", "kv_heads": "model.num_kv_heads",
               "mlp": "model.d_ff", "head_dim": "model.head_dim",
               "layers": "model.num_layers"}


def make_rules(overrides: str = "") -> Rules:
  """DEFAULT_RULES with the `mesh.rules` entries ("name=axis+axis,name=") replaced."""
  rules = dict(DEFAULT_RULES)
  for item in filter(None, (part.strip() for part in overrides.split(","))):
    name, sep, axes_text = item.partition("=")
    if not sep or name not in rules:
      raise ValueError(f"mesh.rules entry {item!r} must be `logical=axes` with a logical axis "
                       f"from {sorted(rules)}")
    axes = tuple(a for a in axes_text.split("+") if a)
    unknown = [a for a in axes if a not in MESH_AXES]
    if unknown:
      raise ValueError(f"mesh.rules entry {item!r} names unknown mesh axes {unknown}; "
                       f"use {MESH_AXES}")
    rules[name] = None if not axes else axes[0] if len(axes) == 1 else axes
  return tuple(rules.items())


def check_divisible(abstract_boxed_tree: Any, mesh_shape: dict[str, int], rules: Rules) -> None:
  """Every sharded parameter dimension must split evenly over its mesh axes.

  Checked on shapes alone, so a config that cannot be laid out fails before compiling and
  names the model field and the mesh axes involved.
  """
  errors = {}
  leaves = jax.tree.leaves(abstract_boxed_tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  for leaf in leaves:
    if not isinstance(leaf, nn.Partitioned):
      continue
    spec = nn.logical_to_mesh_axes(leaf.names, rules)
    for name, size, axes in zip(leaf.names, leaf.value.shape, spec):
      axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
      ways = math.prod(mesh_shape[a] for a in axes)
      if size % ways:
        field = AXIS_FIELDS.get(name, f"the {name!r} dimension")
        mesh_fields = " * ".join(f"mesh.{a}" for a in axes)
        errors[name] = (f"{field}={size} is not divisible by {mesh_fields} = {ways} (logical "
                        f"axis {name!r}); change one of them, or replicate the axis with "
                        f"--config.mesh.rules='{name}='")
  if errors:
    raise ValueError("Invalid sharding: " + "; ".join(errors.values()))


def logical_shardings(abstract_boxed_tree: Any, mesh: Mesh, rules: Rules) -> Any:
  """NamedShardings for a tree whose leaves carry logical axis names (nn.Partitioned)."""
  specs = nn.get_partition_spec(abstract_boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Rows of a [batch, ...] array split over the data and fsdp axes."""
  return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def process_rows(sharding: NamedSharding, batch_size: int) -> slice:
  """The rows of a [batch, ...] global array that this process's devices hold.

  With the batch split across processes this is a contiguous block; where processes
  replicate the batch axis, each loads every row it needs and no more. Across slices the
  DCN part of each batch axis is the major one (lm/parallel/mesh.py), so a slice holds one
  block of rows and reads only its share.
  """
  indices = sharding.addressable_devices_indices_map((batch_size,)).values()
  starts = [index[0].start or 0 for index in indices]
  stops = [batch_size if index[0].stop is None else index[0].stop for index in indices]
  start, stop = min(starts), max(stops)
  if sum(b - a for a, b in set(zip(starts, stops))) != stop - start:
    raise ValueError(f"This process's devices hold non-contiguous rows of the batch "
                     f"({sorted(set(zip(starts, stops)))}); reorder the mesh (mesh.data/fsdp; "
                     "across slices, mesh.dcn_fsdp > 1 needs mesh.data = 1)")
  return slice(start, stop)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def with_shardings(abstract_tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs that carry their target sharding (restore and AOT compile targets)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      abstract_tree, shardings)
