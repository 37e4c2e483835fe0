"""A LoRA run's base reference (lm/interop/base_ref.py): the fingerprint of an HF directory or
an lm workdir's newest checkpoint, recorded once and checked at load."""

import os

import pytest

from lm.interop import base_ref


def write(path, data: bytes):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)


def test_a_changed_base_is_an_error_and_a_missing_one_is_not(tmp_path):
  hf = tmp_path / "hf"
  write(str(hf / "config.json"), b"{}")
  write(str(hf / "model.safetensors"), bytes(range(256)) * 1000)
  run = tmp_path / "run"
  os.makedirs(run)
  base_ref.write(str(run), f"hf:{hf}")
  ref = base_ref.check(str(run))
  assert ref["init_from"] == f"hf:{hf}" and len(ref["fingerprint"]) == 64
  write(str(hf / "model.safetensors"), bytes(range(256)) * 999 + bytes(255) + b"\x01")
  with pytest.raises(ValueError, match="changed since"):
    base_ref.check(str(run))
  os.remove(hf / "model.safetensors")
  os.remove(hf / "config.json")
  os.rmdir(hf)
  assert base_ref.check(str(run)) == ref  # gone: frozen/ holds the base, a warning only


def test_a_workdir_base_is_its_newest_checkpoint(tmp_path):
  base = tmp_path / "base"
  write(str(base / "checkpoints" / "5" / "state" / "a"), b"five")
  write(str(base / "checkpoints" / "10" / "state" / "a"), b"ten")
  before = base_ref.fingerprint(str(base))
  write(str(base / "checkpoints" / "5" / "state" / "a"), b"FIVE")   # an older step: no matter
  assert base_ref.fingerprint(str(base)) == before
  write(str(base / "checkpoints" / "10" / "state" / "a"), b"TEN")
  assert base_ref.fingerprint(str(base)) != before
  big = tmp_path / "big"
  write(str(big / "w"), bytes(70 * 2 ** 20))                         # sampled above 64 MiB
  sampled = base_ref.fingerprint(f"hf:{big}")
  with open(big / "w", "r+b") as f:
    f.seek(70 * 2 ** 20 - 1)
    f.write(b"\x01")                                                 # the last byte
  assert base_ref.fingerprint(f"hf:{big}") != sampled
