"""The layers import downwards only: model <- parallel <- train <- stages <- plan, cli
(DESIGN.md); lm.rl (rollouts, rewards, RL math) sits below the stages, lm.constitutional and
lm.experiments (sweeps, reports) above them. In particular the training loop imports no stage."""

import ast
import pathlib

import pytest

LM = pathlib.Path(__file__).resolve().parent.parent / "lm"
FORBIDDEN = {
    "model": ("lm.parallel", "lm.train", "lm.stages", "lm.plan", "lm.cli", "lm.infer",
              "lm.experiments"),
    "parallel": ("lm.train", "lm.stages", "lm.plan", "lm.cli", "lm.experiments"),
    "train": ("lm.stages", "lm.plan", "lm.cli", "lm.experiments"),
    "rl": ("lm.stages", "lm.plan", "lm.cli", "lm.experiments"),
    "stages": ("lm.plan", "lm.cli", "lm.constitutional", "lm.experiments"),
    "constitutional": ("lm.plan", "lm.cli", "lm.experiments"),
    "experiments": ("lm.cli",),
}


def imported_modules(path: pathlib.Path) -> set[str]:
  names = set()
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f"{node.module}.{alias.name}" for alias in node.names)
  return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_upward_imports(package):
  files = sorted((LM / package).glob("*.py"))
  assert files
  for path in files:
    for name in imported_modules(path):
      for forbidden in FORBIDDEN[package]:
        assert not (name == forbidden or name.startswith(forbidden + ".")), (
            f"{path.relative_to(LM.parent)} imports {name}")


def test_the_loop_imports_no_stage_at_run_time():
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  code = ("import sys, lm.train.loop, lm.train.checkpoint; "
          "print(sorted(m for m in sys.modules if m.startswith(('lm.stages', 'lm.plan'))))")
  out = subprocess.run([sys.executable, "-c", code], cwd=LM.parent, capture_output=True,
                       text=True, check=True).stdout
  assert out.strip() == "[]"
