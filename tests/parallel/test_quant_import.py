"""QLoRA's import (lm/stages/lora.py `import_leaf`, lm/model/quant.py `quantize_placed`) on 8
CPU devices: an lm workdir read and quantized one leaf at a time, each straight into its
sharding, equals the whole float model quantized at once on one host."""

import os
import subprocess
import sys

import jax

from tests.parallel.test_distributed import ROOT, finish

WORKER = os.path.join(os.path.dirname(__file__), "quant_import_worker.py")


def test_a_leaf_at_a_time_import_equals_quantizing_the_whole_model(tmp_path):
  assert jax.device_count() == 1
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
  process = subprocess.Popen([sys.executable, WORKER, str(tmp_path / "base")], env=env,
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  out = finish(process)
  assert out.strip().endswith("OK")
