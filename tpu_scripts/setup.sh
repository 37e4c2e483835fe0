#!/usr/bin/env bash
# Install this repository on every worker of a TPU VM: ~/lm (the code), ~/lm_venv (a virtual
# environment with `pip install -e .` and jax[tpu] at the version setup.py pins), ~/lm_logs.
#
# Usage: setup.sh --name=NAME --zone=ZONE [options]
#
#   --name=NAME         TPU VM name                                                   required
#   --zone=ZONE         its zone                                                      required
#   --project=PROJECT   default: gcloud's configured project
#   --worker=W          all (default), one index, a list (0,2) or a range (1-3)
#   --num-slices=N      every worker of the slices NAME-0 ... NAME-(N-1) (create.sh --num-slices)
#   --repo=URL          git clone URL on every worker (and fetch on reruns) instead of copying
#                       this checkout; the workers need read access to it
#   --ref=REF           with --repo: branch, tag or commit to check out (default: the remote's HEAD)
#   --python=PYTHON     interpreter for the venv (default python3.11, which `lm` needs; installed
#                       from the deadsnakes PPA when the image lacks it, as Ubuntu 22.04 images do)
#   --check             then print what JAX sees on each worker (run it on all workers at
#                       once: a pod slice's TPU runtime waits for every host)
#   --dry-run           print the commands, run nothing
#   -h, --help          this help
#
# Without --repo, the committed state of this checkout (HEAD, via `git archive`) is copied;
# uncommitted changes are not. Rerunning updates the code and the packages in place.
#
# Example:
#   setup.sh --name=lm-v5p-32 --zone=us-east5-a --check
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

REPO_URL=""
REF="HEAD"
PYTHON="python3.11"
CHECK=0

while (($#)); do
  case $1 in
    --worker | --worker=*) worker_opt "$@" ;;
    --repo | --repo=*) opt REPO_URL "$@" ;;
    --ref | --ref=*) opt REF "$@" ;;
    --python | --python=*) opt PYTHON "$@" ;;
    --check) CHECK=1 OPT_SHIFT=1 ;;
    *) common_opt "$@" ;;
  esac
  shift "$OPT_SHIFT"
done

require_tpu
[[ $PYTHON =~ ^python3\.[0-9]+$ ]] || die "--python=$PYTHON: expected python3.N, e.g. python3.11"
if [[ -z $REPO_URL && $REF != HEAD ]]; then
  die "--ref needs --repo (without it this checkout is copied)"
fi

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
jax_version=$(sed -n 's/.*"jax==\([^"]*\)".*/\1/p' "$REPO_ROOT/setup.py" | head -n 1)
jax_tpu="jax[tpu]${jax_version:+==$jax_version}"

# shellcheck disable=SC2088  # a literal ~, for the workers' shell to expand
repo="~/$REMOTE_REPO" venv="~/$REMOTE_VENV"
apt=(sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -q)
steps=()
if [[ -n $REPO_URL ]]; then
  steps+=("{ [ -d $repo/.git ] || git clone --quiet $(quote "$REPO_URL") $repo; }"
    "git -C $repo fetch --quiet origin $(quote "$REF")"
    "git -C $repo checkout --quiet --detach FETCH_HEAD")
else
  steps+=("mkdir -p $repo" "tar -xzf ~/lm-src.tar.gz -C $repo" "rm -f ~/lm-src.tar.gz")
fi
steps+=("if ! $PYTHON -c 'import ensurepip, venv' > /dev/null 2>&1; then ${apt[*]} update && ${apt[*]} install -y software-properties-common && sudo add-apt-repository -y ppa:deadsnakes/ppa && ${apt[*]} install -y $PYTHON $PYTHON-venv; fi"
  "{ [ -x $venv/bin/python ] || $PYTHON -m venv $venv; }"
  "$venv/bin/pip install --quiet --upgrade pip"
  "cd $repo"
  "$venv/bin/pip install --quiet -e . $(quote "$jax_tpu")"
  "mkdir -p ~/$REMOTE_LOGS"
  "$venv/bin/python -c $(quote 'import jax, lm, socket; print(f"{socket.gethostname()}: lm installed, jax {jax.__version__}")')")
if ((CHECK)); then
  steps+=("$venv/bin/python -c $(quote 'import jax, socket; print(f"{socket.gethostname()}: process {jax.process_index()} of {jax.process_count()}, {jax.local_device_count()} local of {jax.device_count()} devices ({jax.devices()[0].device_kind})")')")
fi
remote=$(printf ' && %s' "${steps[@]}")
remote=${remote# && }

location_args
tarball="${TMPDIR:-/tmp}/lm-src-$NAME.tar.gz"

# One slice: the copy (unless --repo), then the install on its workers.
# shellcheck disable=SC2329  # called through on_slices
set_up_slice() {
  if [[ -z $REPO_URL ]]; then
    run gcloud compute tpus tpu-vm scp "$tarball" "$(slice_name "$1"):lm-src.tar.gz" \
      "${LOCATION[@]}" --worker="$WORKER"
  fi
  ssh_slice "$1" "$remote"
}

if [[ -z $REPO_URL ]]; then
  if [[ -n $(git -C "$REPO_ROOT" status --porcelain --untracked-files=no) ]]; then
    warn "uncommitted changes in $REPO_ROOT are not copied (git archive HEAD); commit them first"
  fi
  run git -C "$REPO_ROOT" archive --format=tar.gz --output="$tarball" HEAD
fi
status=0
on_slices set_up_slice || status=$?
if [[ -z $REPO_URL ]]; then run rm -f "$tarball"; fi
exit "$status"
