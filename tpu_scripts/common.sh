# shellcheck shell=bash disable=SC2034  # (the variables here are read by the scripts that source it)
# Sourced by every tpu_scripts/*.sh: option parsing, `run` (execute, or only print with
# --dry-run), the gcloud arguments every command shares, and the remote paths on the workers.
#
# Conventions: usage errors exit 2 with a message naming the option; `run` prints each command
# as "+ word word ..." (POSIX shell quoting, one command per line) to stdout under --dry-run
# and executes nothing, or to stderr and then executes it.

DRY_RUN=0
NAME=""
ZONE=""
PROJECT=""
WORKER="all"
NUM_SLICES=1
OPT_SHIFT=1
LOCATION=()

# On every worker, relative to $HOME (one TPU VM runs one training job at a time). The
# environment variables exist for a second checkout side by side, and for the tests.
REMOTE_REPO=${LM_TPU_REPO:-lm}         # the checkout of this repository
REMOTE_VENV=${LM_TPU_VENV:-lm_venv}    # the virtual environment with `lm` and jax[tpu]
REMOTE_LOGS=${LM_TPU_LOGS:-lm_logs}    # <run>.log: stdout and stderr of `lm train`

# The remote step that sets $pat, the `pgrep -f` / `pkill -f` pattern of a training process:
# the python of this user's venv (under the worker's $HOME) running its `lm` entry point.
# Anchored at the start of the command line so that it never matches the remote shell that
# runs pgrep itself (whose command line contains this pattern as text); the home directory
# keeps apart the jobs of two users, or of two slices' stand-ins on one test machine.
# shellcheck disable=SC2016  # $HOME is for the worker's shell to expand
TRAIN_PATTERN_STEP='pat="^[^ ]*python[^ ]* $HOME/'"$REMOTE_VENV"'/bin/lm train( |\$)"'

die() {
  printf '%s: error: %s\n' "$(basename "$0")" "$*" >&2
  exit 2
}

for dir in "$REMOTE_REPO" "$REMOTE_VENV" "$REMOTE_LOGS"; do
  [[ $dir =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] ||
    die "LM_TPU_REPO, LM_TPU_VENV and LM_TPU_LOGS name a directory in the home directory," \
      "not '$dir'"
done

warn() {
  printf '%s: warning: %s\n' "$(basename "$0")" "$*" >&2
}

note() {
  printf '%s: %s\n' "$(basename "$0")" "$*" >&2
}

# The comment block at the top of the calling script, without the leading "# ".
usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

# One word, quoted for a POSIX shell only when it needs it (like Python's shlex.quote); in
# `--flag=value` only the value is quoted, which reads better and splits back the same.
quote() {
  local s=$1 q="'\\''" flag
  if [[ -n $s && $s != *[!A-Za-z0-9_./:=@%+,-]* ]]; then
    printf '%s' "$s"
  elif [[ $s == --?*=* && ${s%%=*} != *[!A-Za-z0-9_.-]* ]]; then
    flag=${s%%=*}
    printf '%s=' "$flag"
    quote "${s#*=}"
  else
    printf "'%s'" "${s//\'/$q}"
  fi
}

# All arguments quoted and joined by spaces: a command line a shell would split back into them.
quote_args() {
  local sep="" arg
  for arg in "$@"; do
    printf '%s' "$sep"
    quote "$arg"
    sep=" "
  done
}

# run CMD [ARG...]: with --dry-run print "+ CMD ARG..." to stdout and do nothing; otherwise
# print the same line to stderr and execute it.
run() {
  if ((DRY_RUN)); then
    printf '+ %s\n' "$(quote_args "$@")"
  else
    printf '+ %s\n' "$(quote_args "$@")" >&2
    "$@"
  fi
}

# opt VAR "$@": VAR gets the value of `--flag=value` or `--flag value`; OPT_SHIFT says how many
# arguments that took, for the caller's `shift "$OPT_SHIFT"`.
opt() {
  local var=$1 flag=$2
  if [[ $flag == *=* ]]; then
    printf -v "$var" '%s' "${flag#*=}"
    OPT_SHIFT=1
  elif (($# >= 3)); then
    printf -v "$var" '%s' "$3"
    OPT_SHIFT=2
  else
    die "$flag needs a value"
  fi
}

# Options every script takes: --name, --zone, --project, --num-slices, --dry-run, --help.
# Anything else is an error that names it.
common_opt() {
  OPT_SHIFT=1
  case $1 in
    --name | --name=*) opt NAME "$@" ;;
    --num-slices | --num-slices=*)
      opt NUM_SLICES "$@"
      [[ $NUM_SLICES =~ ^[1-9][0-9]*$ ]] ||
        die "--num-slices=$NUM_SLICES: expected the number of slices, 1 or more"
      ;;
    --zone | --zone=*) opt ZONE "$@" ;;
    --project | --project=*) opt PROJECT "$@" ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) die "unknown option '$1' (see $(basename "$0") --help)" ;;
  esac
}

# --worker for the scripts that ssh: all, one index, a list (1,3) or a range (1-3).
worker_opt() {
  opt WORKER "$@"
  [[ $WORKER =~ ^(all|[0-9]+([,-][0-9]+)*)$ ]] ||
    die "--worker=$WORKER: expected all, a worker index (0), a list (0,2) or a range (1-3)"
}

# require VAR FLAG WHAT: fail, naming FLAG, unless VAR is set.
require() {
  local var=$1 flag=$2 what=$3
  [[ -n ${!var} ]] || die "missing required $flag ($what)"
}

# The options every TPU script needs; also checks that the TPU name is one gcloud accepts.
require_tpu() {
  require NAME --name "the TPU VM or queued-resource name, e.g. --name=lm-v5p-32"
  require ZONE --zone "the TPU zone, e.g. --zone=us-east5-a"
  [[ $NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
    die "--name=$NAME: use lowercase letters, digits and hyphens, starting with a letter"
}

# A name used as a file name on the workers (run names): no slashes, no spaces.
check_word() {
  local flag=$1 value=$2
  [[ $value =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] ||
    die "$flag=$value: use letters, digits, '.', '_' and '-' only"
}

# The gcloud arguments after the resource name: --zone and, when given, --project.
location_args() {
  LOCATION=(--zone="$ZONE")
  if [[ -n $PROJECT ]]; then
    LOCATION+=(--project="$PROJECT")
  fi
}

# slice_name INDEX: the TPU VM of slice INDEX. One slice is --name itself; with --num-slices=N
# they are NAME-0 ... NAME-(N-1), as `create.sh --num-slices=N` (a queued resource with
# --node-count=N --node-prefix=NAME) names them.
slice_name() {
  if ((NUM_SLICES == 1)); then
    printf '%s' "$NAME"
  else
    printf '%s-%s' "$NAME" "$1"
  fi
}

# on_slices FUNCTION: `FUNCTION INDEX` for every slice, all at once (a multislice job's
# runtime waits for every slice), one after the other under --dry-run so that the printed
# commands come in order. Fails with the last failure's status when any of them failed.
on_slices() {
  local fn=$1 i pid status=0 pids=()
  if ((NUM_SLICES == 1 || DRY_RUN)); then
    for ((i = 0; i < NUM_SLICES; i++)); do
      "$fn" "$i" || status=$?
    done
    return "$status"
  fi
  for ((i = 0; i < NUM_SLICES; i++)); do
    "$fn" "$i" &
    pids+=("$!")
  done
  for pid in "${pids[@]}"; do
    wait "$pid" || status=$?
  done
  return "$status"
}

# ssh_slice INDEX COMMAND: run one shell command line on the chosen --worker(s) of a slice.
ssh_slice() {
  location_args
  run gcloud compute tpus tpu-vm ssh "$(slice_name "$1")" "${LOCATION[@]}" --worker="$WORKER" \
    --command="$2"
}

# ssh_workers COMMAND: the same command line on the chosen --worker(s) of every slice.
ssh_workers() {
  SSH_COMMAND=$1
  on_slices ssh_same
}

ssh_same() {
  ssh_slice "$1" "$SSH_COMMAND"
}
