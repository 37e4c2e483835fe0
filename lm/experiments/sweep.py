"""`lm sweep`: many runs of one config, each with its own overrides, in one workdir.

A sweep file is Python, like a config file: `get_sweep(arg)` returns a list of override
dicts, one per run, keyed by config path (`{"model.mlp": "gelu", "seed": 1}`), built with
`product`, `sweep`, `zipped` and `random_search` below (big_vision's `hyper` in spirit).
An optional `label` key names a run's variant in the run's directory and in the report;
it is not a config field. An optional `REPORT = dict(x=..., fit=...)` in the file tells
`lm report` what to plot against (lm/experiments/report.py).

Each run lives in `<workdir>/<name>`, the name built from its overrides (`mlp-gelu__seed-1`),
so it can be found, resumed and reported. `sweep_run.json` there records the overrides,
whether the run finished, and the wall time of every invocation: a finished run is skipped,
an interrupted one resumes from its newest checkpoint (the training loop's own resume).
"""

import copy
import dataclasses
import hashlib
import importlib.util
import itertools
import json
import math
import os
import random
import re
import shlex
import socket
import time
from typing import Any, Callable, Iterable, Sequence

import ml_collections

from lm.train import preemption

Overrides = dict[str, Any]
LABEL = "label"          # a variant's name, not a config field
RUN_FILE = "sweep_run.json"
SWEEP_FILE = "sweep.json"
MAX_NAME = 120           # longer names end in a hash instead


# --- Building the list of runs ----------------------------------------------------------------

def sweep(key: str, values: Iterable[Any]) -> list[Overrides]:
  """One axis: `[{key: v} for v in values]`."""
  return [{key: v} for v in values]


def product(*axes: Sequence[Overrides]) -> list[Overrides]:
  """Every combination of the axes (the grid), the last axis varying fastest."""
  return [dict(itertools.chain.from_iterable(d.items() for d in combo))
          for combo in itertools.product(*axes)]


def zipped(*axes: Sequence[Overrides]) -> list[Overrides]:
  """The axes side by side: run i takes the i-th entry of each (all of one length)."""
  lengths = {len(a) for a in axes}
  if len(lengths) > 1:
    raise ValueError(f"zipped: the axes have different lengths {sorted(lengths)}")
  return [dict(itertools.chain.from_iterable(d.items() for d in combo)) for combo in zip(*axes)]


@dataclasses.dataclass(frozen=True)
class LogUniform:
  low: float
  high: float

  def sample(self, rng: random.Random) -> float:
    return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))


@dataclasses.dataclass(frozen=True)
class Uniform:
  low: float
  high: float

  def sample(self, rng: random.Random) -> float:
    return rng.uniform(self.low, self.high)


@dataclasses.dataclass(frozen=True)
class Choice:
  values: tuple

  def sample(self, rng: random.Random) -> Any:
    return rng.choice(self.values)


def random_search(num_runs: int, space: dict[str, Any], rng_seed: int = 0) -> list[Overrides]:
  """`num_runs` points drawn from `space` (config path -> LogUniform / Uniform / Choice, or a
  fixed value), reproducible from `rng_seed`. Floats are rounded to 3 significant digits, so
  run names stay short."""
  rng = random.Random(rng_seed)
  runs = []
  for _ in range(num_runs):
    point = {}
    for key, dist in space.items():
      value = dist.sample(rng) if hasattr(dist, "sample") else dist
      point[key] = float(f"{value:.3g}") if isinstance(value, float) else value
    runs.append(point)
  return runs


def load_sweep(spec: str) -> tuple[list[Overrides], dict]:
  """(the runs' overrides, the file's REPORT options) from `file.py[:arg]`'s `get_sweep(arg)`."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--sweep={spec}: no such file")
  module_spec = importlib.util.spec_from_file_location("lm_sweep_file", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"--sweep={spec}: the file defines no get_sweep(arg)")
  runs = module.get_sweep(arg or None)
  if not isinstance(runs, list) or not runs or not all(isinstance(r, dict) for r in runs):
    raise ValueError(f"--sweep={spec}: get_sweep() must return a non-empty list of dicts "
                     f"(config path -> value), not {type(runs).__name__}")
  for i, run in enumerate(runs):
    for key in run:
      if not isinstance(key, str) or not key:
        raise ValueError(f"--sweep={spec}: run {i} has the key {key!r}; keys are config paths "
                         "such as 'train.lr'")
  return runs, dict(getattr(module, "REPORT", {}))


# --- Names and configs ------------------------------------------------------------------------

def format_value(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:g}"
  return str(value)


def short_keys(keys: Iterable[str]) -> dict[str, str]:
  """Each config path -> its last component, or the whole path where two would collide."""
  keys = sorted(set(keys) - {LABEL})
  last = [k.rsplit(".", 1)[-1] for k in keys]
  return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def _clean(text: str) -> str:
  """A name tpu_scripts accepts as a run (letters, digits, '.', '_', '-')."""
  return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def run_name(overrides: Overrides, shorts: dict[str, str]) -> str:
  """`positions-learned__seed-1`: `key-value` pairs in the sweep's order, the seed last,
  joined by `__`; a `label` stands for every key but the seed. No overrides: `base`."""
  parts = []
  if LABEL in overrides:
    parts.append(_clean(format_value(overrides[LABEL])))
    keys = []
  else:
    keys = [k for k in overrides if k != "seed"]
  keys += ["seed"] if "seed" in overrides else []
  parts += [f"{shorts[k]}-{_clean(format_value(overrides[k]))}" for k in keys]
  name = "__".join(parts) or "base"
  if not name[0].isalnum():
    name = "r" + name
  if len(name) > MAX_NAME:
    digest = hashlib.sha1(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()
    name = name[:MAX_NAME - 9] + "-" + digest[:8]
  return name


def group_of(overrides: Overrides) -> str:
  """What a run is a seed of: its label, else its overrides but the seed, as `k=v, ...`."""
  if LABEL in overrides:
    return str(overrides[LABEL])
  shorts = short_keys(overrides)
  return ", ".join(f"{shorts[k]}={format_value(v)}" for k, v in sorted(overrides.items())
                   if k not in ("seed", LABEL)) or "base"


def apply_overrides(config: ml_collections.ConfigDict, overrides: Overrides,
                    where: str = "") -> ml_collections.ConfigDict:
  """A copy of the (locked) `config` with `overrides` set; an unknown path or a value of the
  wrong type is an error naming the key and `where` it came from."""
  config = copy.deepcopy(config)
  for key, value in overrides.items():
    if key == LABEL:
      continue
    *parents, leaf = key.split(".")
    node = config
    try:
      for part in parents:
        node = node[part]
      if leaf not in node:
        raise KeyError(leaf)
      node[leaf] = value
    except (KeyError, AttributeError, TypeError) as e:
      raise ValueError(f"{where}the key {key!r}={value!r} does not fit the config "
                       f"({type(e).__name__}: {e}); keys are config paths such as "
                       "'train.lr' or 'model.mlp'") from e
  return config


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  overrides: Overrides
  workdir: str
  config: ml_collections.ConfigDict

  @property
  def group(self) -> str:
    return group_of(self.overrides)


def plan(config: ml_collections.ConfigDict, all_overrides: list[Overrides], workdir: str,
         sweep_spec: str = "") -> list[Run]:
  """The runs, each config checked before any trains; two runs with one name are an error."""
  shorts = short_keys(k for o in all_overrides for k in o)
  runs, seen = [], {}
  for i, overrides in enumerate(all_overrides):
    name = run_name(overrides, shorts)
    if name in seen:
      raise ValueError(f"--sweep={sweep_spec}: runs {seen[name]} and {i} are both named "
                       f"{name!r} ({all_overrides[seen[name]]} and {overrides}); give each "
                       "run different overrides or a distinct 'label'")
    seen[name] = i
    run_config = apply_overrides(config, overrides, f"--sweep={sweep_spec}, run {i}: ")
    runs.append(Run(name, overrides, os.path.join(workdir, name), run_config))
  return runs


# --- Running ----------------------------------------------------------------------------------

def read_record(run_workdir: str) -> dict | None:
  path = os.path.join(run_workdir, RUN_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_record(run_workdir: str, record: dict) -> None:
  os.makedirs(run_workdir, exist_ok=True)
  tmp = os.path.join(run_workdir, RUN_FILE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(record, f, indent=2, sort_keys=True, default=str)
    f.write("\n")
  os.replace(tmp, os.path.join(run_workdir, RUN_FILE))


def _alive_elsewhere(record: dict) -> bool:
  """The record's run is being trained now by another process on this machine."""
  pid = record.get("pid")
  if not pid or pid == os.getpid() or record.get("host") != socket.gethostname():
    return False
  try:
    os.kill(pid, 0)
  except (ProcessLookupError, PermissionError):
    return False
  return True


def status(run: Run) -> str:
  """"finished" (trained to train.steps), "running" (by another sweep process here),
  "partial" (started, not finished) or "new"."""
  record = read_record(run.workdir)
  if record and record.get("finished") and record.get("steps", 0) >= run.config.train.steps:
    return "finished"
  if record and _alive_elsewhere(record):
    return "running"
  if record or os.path.isdir(os.path.join(run.workdir, "checkpoints")):
    return "partial"
  return "new"


def write_sweep_file(workdir: str, sweep_spec: str, config_spec: str, runs: list[Run],
                     report: dict) -> None:
  """`<workdir>/sweep.json`: what `lm report` reads to know the runs, groups and plots."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, SWEEP_FILE), "w") as f:
    json.dump({"sweep": sweep_spec, "config": config_spec, "report": report,
               "runs": [{"name": r.name, "overrides": r.overrides, "group": r.group}
                        for r in runs]}, f, indent=2, sort_keys=True, default=str)
    f.write("\n")


def run_all(runs: list[Run], train: Callable[[ml_collections.ConfigDict, str], dict],
            log: Callable[[str], None] = print) -> list[str]:
  """Trains each run that is not finished, one after the other; returns the names trained.
  `train(config, workdir)` resumes from the workdir's newest checkpoint (the training loop
  does). A signal that reaches a run (it stops early, or it came during the run's last eval or
  save) ends the sweep."""
  trained = []
  preemption.StopRequest.caught_in_process = None
  for i, run in enumerate(runs):
    state = status(run)
    if state in ("finished", "running"):  # two sweep processes can share a workdir
      log(f"[{i + 1}/{len(runs)}] {run.name}: {state}, skipped")
      continue
    log(f"[{i + 1}/{len(runs)}] {run.name}: {'resuming' if state == 'partial' else 'starting'}")
    record = read_record(run.workdir) or {"invocations": []}
    record.update(name=run.name, overrides=run.overrides, group=run.group, finished=False,
                  steps=run.config.train.steps, pid=os.getpid(), host=socket.gethostname())
    write_record(run.workdir, record)
    start = time.time()
    metrics = train(run.config, run.workdir)
    seconds = time.time() - start
    record["invocations"].append({"started": start, "seconds": seconds,
                                  "last_step": metrics.get("step")})
    record["wall_seconds"] = sum(inv["seconds"] for inv in record["invocations"])
    record["finished"] = not metrics.get("stopped_early", False)
    record["pid"] = None
    write_record(run.workdir, record)
    trained.append(run.name)
    if not record["finished"]:
      log(f"{run.name} stopped at step {metrics.get('step')}; run the same command to resume")
      break
    if preemption.StopRequest.caught_in_process is not None:
      log(f"{run.name} finished; stopped as asked before the next run")
      break
  return trained


# --- Cloud TPU --------------------------------------------------------------------------------

def flag_value(value: Any) -> str:
  """A value as `--config.a.b=` parses it back."""
  if isinstance(value, float):
    return repr(value)
  return str(value)


def tpu_commands(runs: list[Run], config_spec: str, base_overrides: Sequence[str],
                 launch_args: str, script: str = "tpu_scripts/launch.sh") -> list[list[str]]:
  """One `tpu_scripts/launch.sh` command per run: `launch_args` (--name, --zone, ...; `{i}`
  becomes the run's index, `{run}` its name), the config and the sweep's own `--config.*`
  flags, the run's workdir (`--run` its name, for the log) and its overrides. A base flag
  that a run overrides is left out."""
  commands = []
  for i, run in enumerate(runs):
    keys = {k for k in run.overrides if k != LABEL}
    base = [a for a in base_overrides
            if a.split("=", 1)[0].removeprefix("--config.") not in keys]
    extra = shlex.split(launch_args.replace("{i}", str(i)).replace("{run}", run.name))
    commands.append([script, *extra, f"--config={config_spec}", f"--workdir={run.workdir}",
                     f"--run={run.name}", *base,
                     *(f"--config.{k}={flag_value(v)}" for k, v in run.overrides.items()
                       if k != LABEL)])
  return commands


def tpu_script(commands: list[list[str]], header: str) -> str:
  """A bash script of `commands`, one per line, after a comment `header`."""
  lines = ["#!/usr/bin/env bash", *(f"# {line}" if line else "#" for line in header.splitlines()),
           "set -euo pipefail"]
  lines += [shlex.join(c) for c in commands]
  return "\n".join(lines) + "\n"
