"""The base a LoRA run adapted: its path and fingerprint, recorded once, checked at load.

A LoRA workdir holds its adapters (checkpoints/) and the base as it trained on it (frozen/,
quantized for QLoRA); `WORKDIR/base.json` says where that base came from (`init_from`: an
HF directory or an lm workdir) and what it was, so exports and PEFT adapters name the right
base model and a base changed since (retrained, replaced) is an error at load, not silently
different weights. A base no longer at its path is only a warning: frozen/ holds it.

The fingerprint is sha256 over the base's files (sorted relative paths and sizes), each
file's contents read in full up to 64 MiB and, above that, sampled (16 chunks of 64 KiB at
evenly spaced offsets, the first and the last included): cheap for an 8B model, and any
retraining or re-import changes it.
"""

import hashlib
import json
import os
from typing import Any

from absl import logging
from etils import epath

BASE_FILE = "base.json"
_WHOLE = 64 * 2 ** 20
_CHUNK = 64 * 2 ** 10
_SAMPLES = 16


def _source_dir(init_from: str) -> epath.Path:
  """The directory whose files are the base: an HF directory, or an lm workdir's newest
  checkpoint (else its imported params/)."""
  if init_from.startswith("hf:"):
    return epath.Path(os.path.abspath(os.path.expanduser(init_from[3:])))
  root = epath.Path(os.path.abspath(os.path.expanduser(init_from.removesuffix("/"))))
  steps = sorted((int(p.name) for p in (root / "checkpoints").iterdir() if p.name.isdigit())
                 if (root / "checkpoints").exists() else [])
  return root / "checkpoints" / str(steps[-1]) if steps else root / "params"


def _file_digest(path: epath.Path, size: int) -> bytes:
  digest = hashlib.sha256()
  with path.open("rb") as f:
    if size <= _WHOLE:
      digest.update(f.read())
    else:
      for i in range(_SAMPLES):
        f.seek((size - _CHUNK) * i // (_SAMPLES - 1))
        digest.update(f.read(_CHUNK))
  return digest.digest()


def _files(root: epath.Path) -> list[epath.Path]:
  out = []
  for p in root.iterdir():
    out.extend(_files(p) if p.is_dir() else [p])
  return out


def fingerprint(init_from: str) -> str:
  """sha256 of the base `init_from` names (the module docstring says over what)."""
  root = _source_dir(init_from)
  if not root.exists():
    raise FileNotFoundError(f"init_from={init_from!r}: {root} does not exist")
  digest = hashlib.sha256()
  for path in sorted(_files(root)):
    size = path.stat().length
    digest.update(f"{path.relative_to(root)}\0{size}\0".encode())
    digest.update(_file_digest(path, size))
  return digest.hexdigest()


def reference(init_from: str) -> dict[str, Any]:
  """{"init_from", "fingerprint"} of a base, its path absolute."""
  if init_from.startswith("hf:"):
    path = "hf:" + os.path.abspath(os.path.expanduser(init_from[3:]))
  else:
    path = os.path.abspath(os.path.expanduser(init_from))
  return {"init_from": path, "fingerprint": fingerprint(init_from)}


def write(workdir: str, init_from: str) -> None:
  """Records the base of a LoRA run starting in `workdir` (process 0 writes)."""
  (epath.Path(workdir) / BASE_FILE).write_text(json.dumps(reference(init_from), indent=1))


def read(workdir: str) -> dict[str, Any] | None:
  path = epath.Path(workdir) / BASE_FILE
  return json.loads(path.read_text()) if path.exists() else None


def check(workdir: str) -> dict[str, Any] | None:
  """The base reference of `workdir` (None for a run without one), after checking that the
  base at its path is still the one it trained on: a ValueError if it changed."""
  ref = read(workdir)
  if ref is None:
    return None
  try:
    now = fingerprint(ref["init_from"])
  except FileNotFoundError:
    logging.warning("%s: its base %s is gone; using the copy in %s/frozen", workdir,
                    ref["init_from"], workdir)
    return ref
  if now != ref["fingerprint"]:
    raise ValueError(f"{workdir}/{BASE_FILE}: the base {ref['init_from']} changed since this "
                     f"LoRA run trained on it (fingerprint {ref['fingerprint'][:12]}, now "
                     f"{now[:12]}); its adapters belong to the old base")
  return ref
