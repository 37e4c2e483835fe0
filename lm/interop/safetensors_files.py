"""safetensors files: tensors read by name and slice without loading whole files, and files
written one tensor at a time (the header needs only names, dtypes and shapes).

The format: an 8-byte little-endian header length, a JSON header {name: {dtype, shape,
data_offsets}} padded with spaces to 8 bytes, then the raw little-endian tensor bytes.
"""

import glob
import json
import math
import os
import struct
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

# Export dtypes: lm name -> (safetensors code, numpy dtype).
DTYPES = {"float32": ("F32", np.float32), "bfloat16": ("BF16", jnp.bfloat16),
          "float16": ("F16", np.float16)}


class Reader:
  """Tensors of `model.safetensors`, or of shards listed in `model.safetensors.index.json`,
  read by name and slice without loading whole files."""

  def __init__(self, directory: str):
    from safetensors import safe_open  # pylint: disable=import-outside-toplevel
    self._safe_open = safe_open
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
      with open(index, encoding="utf-8") as f:
        weight_map = json.load(f)["weight_map"]
      files = sorted(set(weight_map.values()))
    else:
      files = sorted(os.path.basename(p)
                     for p in glob.glob(os.path.join(directory, "*.safetensors")))
    if not files:
      unsafe = [os.path.basename(p) for p in glob.glob(os.path.join(directory, "*.bin"))
                + glob.glob(os.path.join(directory, "*.pt*"))]
      raise FileNotFoundError(
          f"{directory} holds no *.safetensors" + (
              f" (only {unsafe}: pickle formats are never loaded; re-save the model with "
              "`save_pretrained(..., safe_serialization=True)`)" if unsafe else ""))
    self._handles: dict[tuple[str, str], Any] = {}
    self.files = {}
    self.shapes, self.dtypes = {}, {}
    for file in files:
      path = os.path.join(directory, file)
      handle = self._handle(path, "numpy")
      for name in handle.keys():
        tensor = handle.get_slice(name)
        self.files[name] = path
        self.shapes[name] = tuple(tensor.get_shape())
        self.dtypes[name] = tensor.get_dtype()

  def _handle(self, path: str, framework: str):
    key = (path, framework)
    if key not in self._handles:
      self._handles[key] = self._safe_open(path, framework=framework).__enter__()
    return self._handles[key]

  def read(self, name: str, index: tuple[slice, ...]) -> np.ndarray:
    """tensor[index] as float32; bfloat16 is read through JAX on the CPU (numpy has none)."""
    path = self.files[name]
    if self.dtypes[name] in ("BF16", "F8_E4M3", "F8_E5M2"):
      cpu = jax.local_devices(backend="cpu")[0]
      with jax.default_device(cpu):
        block = self._handle(path, "flax").get_slice(name)[index]
      return np.asarray(block).astype(np.float32)
    return np.asarray(self._handle(path, "numpy").get_slice(name)[index], np.float32)

  def close(self) -> None:
    for handle in self._handles.values():
      handle.__exit__(None, None, None)
    self._handles.clear()


def write(path: str, tensors: list[tuple[str, tuple[int, ...], Callable[[], np.ndarray]]],
          dtype: str) -> None:
  """Writes (name, shape, make) tensors, calling each `make` only when its bytes are due."""
  code, np_dtype = DTYPES[dtype]
  itemsize = np.dtype(np_dtype).itemsize
  header, offset = {"__metadata__": {"format": "pt"}}, 0
  for name, shape, _ in tensors:
    size = math.prod(shape) * itemsize
    header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + size]}
    offset += size
  encoded = json.dumps(header, separators=(",", ":")).encode()
  encoded += b" " * (-len(encoded) % 8)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(encoded)))
    f.write(encoded)
    for _, _, make in tensors:
      f.write(np.ascontiguousarray(make().astype(np_dtype)).tobytes())
