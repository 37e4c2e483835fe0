"""The command line, end to end in subprocesses: train, sample, resume, config errors."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def lm(*args, check=True):
  result = subprocess.run([sys.executable, "-m", "lm", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  if check and result.returncode:
    raise AssertionError(f"lm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
  return result


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  path = tmp_path_factory.mktemp("corpus")
  for i in range(2):
    (path / f"part{i}.txt").write_text("the quick brown fox jumps over the lazy dog. " * 800)
  return str(path / "*.txt")


def test_train_sample_and_resume(tmp_path, corpus):
  workdir = str(tmp_path / "run")
  flags = ["--config=configs/tiny.py", f"--workdir={workdir}", f"--config.data.source=text:{corpus}",
           f"--config.data.cache_dir={tmp_path / 'cache'}", "--config.train.log_every=2",
           "--config.train.checkpoint_every=2", "--config.train.eval_every=4"]
  first = lm("train", *flags, "--config.train.steps=4")
  assert "Starting at step 0 of 4" in first.stdout
  assert "step 4/4 | loss" in first.stdout and "tok/s" in first.stdout and "ETA" in first.stdout
  assert "eval at step 4" in first.stdout

  second = lm("train", *flags, "--config.train.steps=6")
  assert "Resuming from checkpoint at step 4 of 6" in second.stdout
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    steps = [json.loads(line)["step"] for line in f if '"loss"' in line]
  assert steps == [2, 4, 6]

  sampled = lm("sample", f"--workdir={workdir}", "--prompt=the quick", "--max_new_tokens=12",
               "--temperature=0")
  text = sampled.stdout.rstrip("\n")
  assert text.startswith("the quick") and len(text.encode()) <= len("the quick") + 12
  again = lm("sample", f"--workdir={workdir}", "--prompt=the quick", "--max_new_tokens=12",
             "--temperature=0")
  assert again.stdout == sampled.stdout  # greedy decoding is deterministic


@pytest.mark.parametrize("flag, message", [
    ("--config.train.lrr=1", "Unknown config key 'train.lrr'"),
    ("--config.trainn.lr=1", "Unknown config key 'trainn.lr'"),
    ("--config.train.steps=many", "--config.train.steps=many"),
])
def test_bad_overrides_name_the_key(tmp_path, flag, message):
  result = lm("train", "--config=configs/tiny.py", f"--workdir={tmp_path}", flag, check=False)
  assert result.returncode != 0
  assert message in result.stderr
  assert not os.listdir(tmp_path)


def test_missing_config_file_and_command(tmp_path):
  result = lm("train", "--config=configs/nope.py", f"--workdir={tmp_path}", check=False)
  assert result.returncode != 0 and "configs/nope.py" in result.stderr
  result = lm("fly", check=False)
  assert result.returncode == 2 and "commands: train, sample" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["train", "--config=configs/tiny.py", "--config.mesh.tensor=3", "--workdir=RUN"], "mesh."),
    (["sample", "--workdir=RUN"], "holds no config.json"),
    (["serve"], "missing --workdir"),
], ids=["train_mesh_that_cannot_fit", "sample_from_an_empty_workdir", "serve_without_workdir"])
def test_operator_errors_print_the_message_alone_and_exit_2(tmp_path, args, message):
  result = lm(*[a.replace("RUN", str(tmp_path / "run")) for a in args], check=False)
  assert result.returncode == 2, result.stderr
  assert message in result.stderr
  assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
