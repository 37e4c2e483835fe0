"""Blockwise weight quantization for QLoRA bases: NF4 (4-bit NormalFloat) and int8.

A weight is flattened and cut into blocks of `block` values (64, as in QLoRA); each block
keeps its absolute maximum `absmax` and, per value, a code:
  nf4   the index of the nearest of 16 levels (NF4_LEVELS, QLoRA's NormalFloat: quantiles of
        N(0, 1) scaled to [-1, 1], with an exact zero) of value / absmax; two codes a byte;
  int8  round(127 * value / absmax).
Dequantizing multiplies the level back by absmax, so the error of a value is at most
absmax * (half the widest gap between neighbouring levels) for NF4, absmax / 254 for int8.
Double quantization (QLoRA's) stores the float32 absmaxes themselves as int8, in blocks of
256 around their mean, which adds at most that second step's error times the level (<= 1).

QLoRA (lm/stages/lora.py, `lora.quantize`) stores a frozen base's weight matrices this way
(`quantize_tree`; norms and embeddings stay float32). A scanned model's stacked weights
[L, ...] keep their layer axis in front of every leaf (`lead`): each layer is quantized alone,
so nn.scan hands each layer its own codes, and the adapted model (lm/model/lora.py)
dequantizes a weight where its layer reads it: the step holds one layer's float kernel at a
time, not a float copy of the base.
"""

import dataclasses
import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

# bitsandbytes' NF4 table (QLoRA, Dettmers et al. 2023, App. E); tests rebuild it from the
# normal quantiles independently.
NF4_LEVELS = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
              -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
              0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
              0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
              0.7229568362236023, 1.0)
ABSMAX_BLOCK = 256  # absmaxes per block of the double quantization


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Quantized:
  """A weight as codes and scales; `shape`, `kind` and `block` are static."""
  codes: jax.Array     # nf4: uint8 [n / 2] (two codes a byte); int8: int8 [n]
  absmax: jax.Array    # float32 [blocks], or int8 [blocks] with double quantization
  absmax_scale: jax.Array | None  # double quantization: float32 [blocks / 256] ...
  absmax_mean: jax.Array | None   # ... and the mean of the absmaxes, float32 []
  shape: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))
  kind: str = dataclasses.field(metadata=dict(static=True))
  block: int = dataclasses.field(metadata=dict(static=True))


def _blocks(w: jax.Array, block: int) -> jax.Array:
  if w.size % block:
    raise ValueError(f"a weight of {w.size} values does not split into blocks of {block}")
  return w.reshape(-1, block).astype(jnp.float32)  # [blocks, block]


def _quantize_absmax(absmax: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(int8 codes, per-256 scale, mean) of the absmaxes around their mean."""
  mean = jnp.mean(absmax)
  centred = absmax - mean
  pad = (-centred.size) % ABSMAX_BLOCK
  groups = jnp.pad(centred, (0, pad)).reshape(-1, ABSMAX_BLOCK)           # [G, 256]
  scale = jnp.maximum(jnp.max(jnp.abs(groups), axis=1), 1e-12) / 127.0     # [G]
  codes = jnp.round(groups / scale[:, None]).astype(jnp.int8)
  return codes.reshape(-1)[:absmax.size], scale, mean


def _dequantize_absmax(q: Quantized) -> jax.Array:
  if q.absmax_scale is None:
    return q.absmax
  n = q.absmax.size
  pad = (-n) % ABSMAX_BLOCK
  groups = jnp.pad(q.absmax.astype(jnp.float32), (0, pad)).reshape(-1, ABSMAX_BLOCK)
  return (groups * q.absmax_scale[:, None]).reshape(-1)[:n] + q.absmax_mean


def _quantize_one(w: jax.Array, kind: str, block: int, double_quant: bool) -> Quantized:
  blocks = _blocks(w, block)
  absmax = jnp.max(jnp.abs(blocks), axis=1)                                 # [blocks]
  normalized = blocks / jnp.where(absmax == 0, 1.0, absmax)[:, None]        # in [-1, 1]
  if kind == "nf4":
    levels = jnp.asarray(NF4_LEVELS, jnp.float32)
    index = jnp.argmin(jnp.abs(normalized[..., None] - levels), axis=-1).astype(jnp.uint8)
    pairs = index.reshape(-1, 2)
    codes = (pairs[:, 0] << 4) | pairs[:, 1]                                # [n / 2]
  else:
    codes = jnp.round(normalized * 127.0).astype(jnp.int8).reshape(-1)
  scale = mean = None
  if double_quant:
    absmax, scale, mean = _quantize_absmax(absmax)
  return Quantized(codes, absmax, scale, mean, tuple(w.shape), kind, block)


def _over_lead(fn, x: Any, lead: tuple[int, ...]) -> Any:
  """`fn` mapped over the `lead` axes of every leaf of `x` (one slice at a time)."""
  flat = jax.tree.map(lambda a: a.reshape(-1, *a.shape[len(lead):]), x)
  out = jax.vmap(fn)(flat) if lead else fn(x)
  return jax.tree.map(lambda a: a.reshape(*lead, *a.shape[1:]), out) if lead else out


def quantize(w: jax.Array, kind: str = "nf4", block: int = 64,
             double_quant: bool = False, lead: int = 0) -> Quantized:
  """`w` as NF4 or int8 codes with one absmax per `block` values. The first `lead` axes
  (a scanned model's layer axis) are kept: each slice is quantized alone, and every leaf of
  the result starts with them (`shape` is a slice's)."""
  if kind not in ("nf4", "int8"):
    raise ValueError(f"quantization kind={kind!r} is not one of ['nf4', 'int8']")
  w = jnp.asarray(w)
  return _over_lead(lambda x: _quantize_one(x, kind, block, double_quant), w, w.shape[:lead])


def _dequantize_one(q: Quantized) -> jax.Array:
  absmax = _dequantize_absmax(q)                                            # [blocks]
  if q.kind == "nf4":
    index = jnp.stack([q.codes >> 4, q.codes & 15], axis=-1).reshape(-1, q.block)
    values = jnp.asarray(NF4_LEVELS, jnp.float32)[index]
  else:
    values = q.codes.reshape(-1, q.block).astype(jnp.float32) / 127.0
  return (values * absmax[:, None]).reshape(q.shape)


def dequantize(q: Quantized, dtype=jnp.float32) -> jax.Array:
  """The weight back, in `dtype` ([*lead, *shape])."""
  return _over_lead(_dequantize_one, q, q.codes.shape[:-1]).astype(dtype)


def nbytes(q: Quantized) -> int:
  return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(q))


def num_values(q: Quantized) -> int:
  """How many weights `q` holds (every layer's, when stacked)."""
  return math.prod(q.codes.shape[:-1]) * math.prod(q.shape)


def describe(kind: str, double_quant: bool, block: int = 64) -> str:
  """The storage of a quantized weight in words, with its bits per weight (codes and scales;
  double quantization's per-256 scales counted too)."""
  scale_bits = 8 + 32 / ABSMAX_BLOCK if double_quant else 32
  bits = (4 if kind == "nf4" else 8) + scale_bits / block
  return f"{kind}{' + double quant' if double_quant else ''}, {bits:.2f} bits/weight"


def stacked_axes(path: str) -> int:
  """1 for a scanned model's stacked layer weights (`layers/...`: [L, ...]), else 0."""
  return 1 if "layers" in path.split("/")[:-1] else 0


def quantizable(path: str, shape: tuple[int, ...]) -> bool:
  """A weight matrix of the base (not an adapter, an embedding table, a norm or a bias)."""
  one = shape[stacked_axes(path):]  # one layer's
  return (len(one) >= 2 and not path.endswith(("_lora_a", "_lora_b"))
          and "embedding" not in path and math.prod(one) % 128 == 0)


def _axes(entry) -> tuple[str, ...]:
  return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def shardings(weight: NamedSharding, shape: tuple[int, ...], kind: str, double_quant: bool,
              lead: int = 0, block: int = 64) -> Quantized:
  """Where a weight of `shape` placed by `weight` keeps its codes: the codes and absmaxes
  (one layer's flattened, row-major) split like the layer's first axis, when that axis and
  the blocks divide evenly, so each device holds the rows its float weight would; the
  double quantization's scales replicated."""
  abstract = jax.eval_shape(lambda: quantize(jnp.zeros(shape), kind, block, double_quant, lead))
  spec = tuple(weight.spec) + (None,) * (len(shape) - len(weight.spec))
  first = spec[lead]
  ways = math.prod(weight.mesh.shape[a] for a in _axes(first))
  blocks = math.prod(shape[lead:]) // block
  split = ways > 1 and shape[lead] % ways == 0 and blocks % ways == 0
  flat = PartitionSpec(*(spec[:lead]), first if split else None)
  return dataclasses.replace(
      jax.tree.map(lambda _: NamedSharding(weight.mesh, PartitionSpec()), abstract),
      codes=NamedSharding(weight.mesh, flat), absmax=NamedSharding(weight.mesh, flat))


def quantize_tree(tree: Any, shapes: dict[str, tuple[int, ...]], kind: str,
                  double_quant: bool = False) -> Any:
  """`tree` (nested dicts of arrays, ShapeDtypeStructs or NamedShardings: a pure tree function,
  like a stage's partition) with each quantizable weight as a Quantized; `shapes` gives every
  path's shape (shardings carry none). A leaf that is already a Quantized stays as it is (an
  import quantized as it was read: lm/stages/lora.py)."""
  def leaf(path: str, x):
    if isinstance(x, Quantized) or not quantizable(path, shapes[path]):
      return x
    lead = stacked_axes(path)
    if isinstance(x, NamedSharding):
      return shardings(x, shapes[path], kind, double_quant, lead)
    if isinstance(x, jax.ShapeDtypeStruct):
      return jax.eval_shape(lambda w: quantize(w, kind, double_quant=double_quant, lead=lead), x)
    return quantize(x, kind, double_quant=double_quant, lead=lead)
  flat = flax.traverse_util.flatten_dict(
      tree, sep="/", is_leaf=lambda _, x: isinstance(x, Quantized))
  return flax.traverse_util.unflatten_dict({k: leaf(k, v) for k, v in flat.items()}, sep="/")


def quantize_placed(path: str, w: jax.Array, kind: str, double_quant: bool = False) -> Any:
  """One weight of an import quantized where it lies (on its devices, into `shardings`),
  or returned as it is when it is not a weight matrix: an import is quantized a leaf at a
  time, so no host holds a float copy of the whole model."""
  if not quantizable(path, w.shape):
    return w
  lead = stacked_axes(path)
  out = shardings(w.sharding, w.shape, kind, double_quant, lead)
  return jax.jit(lambda x: quantize(x, kind, double_quant=double_quant, lead=lead),
                 out_shardings=out)(w)


def dequantize_tree(tree: Any, dtype=jnp.float32) -> Any:
  return jax.tree.map(lambda x: dequantize(x, dtype) if isinstance(x, Quantized) else x, tree,
                      is_leaf=lambda x: isinstance(x, Quantized))
