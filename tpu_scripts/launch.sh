#!/usr/bin/env bash
# Start `lm train` on every worker of a TPU VM at once, in the background (setsid nohup), so it
# outlives the ssh session. Each worker appends its output to ~/lm_logs/<run>.log; on a pod
# slice the workers find each other through `lm train --distributed` (jax.distributed). With
# --num-slices=N it starts on every worker of NAME-0 ... NAME-(N-1) with the Multislice
# environment: MEGASCALE_COORDINATOR_ADDRESS (worker 0 of slice 0), MEGASCALE_NUM_SLICES,
# MEGASCALE_SLICE_ID (the slice's index) and MEGASCALE_PORT.
#
# Usage: launch.sh --name=NAME --zone=ZONE --config=FILE --workdir=DIR [options]
#                  [--config.section.field=VALUE ...] [-- LM_TRAIN_ARGS...]
#
#   --name=NAME            TPU VM name                                                required
#   --zone=ZONE            its zone                                                   required
#   --config=FILE[:ARG]    config file, relative to the repository (configs/x.py)     required
#   --workdir=DIR          checkpoints, metrics, config.json; on a pod slice a bucket that every
#                          worker reaches (gs://BUCKET/RUN)                           required
#   --config.a.b=VALUE     config overrides, passed to `lm train` as they are (any number)
#   --run=RUN              log name, ~/lm_logs/RUN.log (default: the workdir's last component)
#   --env=KEY=VALUE        environment variable for `lm train` (repeatable), e.g. LIBTPU_INIT_ARGS
#   --project=PROJECT      default: gcloud's configured project
#   --worker=W             all (default), one index, a list or a range
#   --num-slices=N         the slices NAME-0 ... NAME-(N-1) (create.sh --num-slices); set
#                          --config.mesh.dcn_data (and dcn_fsdp) to multiply to N
#   --coordinator=ADDRESS  with --num-slices: MEGASCALE_COORDINATOR_ADDRESS (default: the
#                          internal IP of NAME-0's worker 0, asked of gcloud)
#   --megascale-port=PORT  with --num-slices: MEGASCALE_PORT (default 8081)
#   --check-after=SECONDS  then check that `lm train` still runs on each worker, and show the
#                          end of its log if not (default 5; 0 skips the check)
#   --dry-run              print the gcloud command, run nothing
#   -h, --help             this help
#   -- LM_TRAIN_ARGS       further `lm train` flags, as they are
#
# A worker already running `lm train` refuses to start another (stop.sh first). Running the
# same command again after a stop or a preemption resumes from the newest checkpoint in DIR.
#
# Example (v5p-32: 16 chips on 4 hosts):
#   launch.sh --name=lm-v5p-32 --zone=us-east5-a --config=configs/quickstart.py \
#     --workdir=gs://my-bucket/runs/qs-v5p --config.mesh.data=1 --config.mesh.fsdp=-1
# Four v5p-256 slices, data parallel across them, FSDP within each:
#   launch.sh --name=lm-ms --zone=us-east5-a --num-slices=4 --config=configs/quickstart.py \
#     --workdir=gs://my-bucket/runs/ms --config.mesh.dcn_data=4 --config.mesh.data=1 \
#     --config.mesh.fsdp=-1
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

CONFIG=""
WORKDIR=""
RUN=""
CHECK_AFTER=5
COORDINATOR=""
MEGASCALE_PORT=8081
ENVS=()
value=""
LM_ARGS=()

while (($#)); do
  case $1 in
    --config.*)
      LM_ARGS+=("$1")
      OPT_SHIFT=1
      ;;
    --config | --config=*) opt CONFIG "$@" ;;
    --workdir | --workdir=*) opt WORKDIR "$@" ;;
    --run | --run=*) opt RUN "$@" ;;
    --check-after | --check-after=*) opt CHECK_AFTER "$@" ;;
    --coordinator | --coordinator=*) opt COORDINATOR "$@" ;;
    --megascale-port | --megascale-port=*) opt MEGASCALE_PORT "$@" ;;
    --env | --env=*)
      opt value "$@"
      [[ $value =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env=$value: expected KEY=VALUE"
      ENVS+=("$value")
      ;;
    --worker | --worker=*) worker_opt "$@" ;;
    --)
      shift
      LM_ARGS+=("$@")
      break
      ;;
    *) common_opt "$@" ;;
  esac
  shift "$OPT_SHIFT"
done

require_tpu
require CONFIG --config "the experiment config, e.g. --config=configs/quickstart.py"
require WORKDIR --workdir "where checkpoints go, e.g. --workdir=gs://my-bucket/runs/NAME"
if [[ -z $RUN ]]; then
  RUN=${WORKDIR%/}
  RUN=${RUN##*/}
fi
check_word --run "$RUN"
[[ $CHECK_AFTER =~ ^[0-9]+(\.[0-9]+)?$ ]] ||
  die "--check-after=$CHECK_AFTER: expected a number of seconds"
config_file=$(dirname "${BASH_SOURCE[0]}")/../${CONFIG%%:*}
if [[ $CONFIG != /* && ! -f $config_file ]]; then
  warn "--config=$CONFIG: no such file in this checkout (the workers run ~/$REMOTE_REPO/${CONFIG%%:*})"
fi
[[ $MEGASCALE_PORT =~ ^[0-9]+$ ]] || die "--megascale-port=$MEGASCALE_PORT: expected a port number"
if ((NUM_SLICES == 1)) && [[ -n $COORDINATOR ]]; then
  die "--coordinator is the Multislice coordinator: it needs --num-slices"
fi
if [[ $WORKDIR != gs://* ]]; then
  warn "--workdir=$WORKDIR is not on GCS: on a pod slice every worker needs the same" \
    "checkpoint directory, and a TPU VM's disk goes when the VM does"
fi

# shellcheck disable=SC2088  # a literal ~, for the workers' shell to expand
log="~/$REMOTE_LOGS/$RUN.log" venv="~/$REMOTE_VENV"
# --distributed: the workers of a slice find each other through jax.distributed (metadata server).
train=(train --distributed --config="$CONFIG" --workdir="$WORKDIR" "${LM_ARGS[@]}")
if ((NUM_SLICES > 1)) && [[ -z $COORDINATOR ]]; then
  location_args
  ip=(gcloud compute tpus tpu-vm describe "$(slice_name 0)" "${LOCATION[@]}"
    --format='value(networkEndpoints[0].ipAddress)')
  if ((DRY_RUN)); then  # the address is only known once gcloud answers
    run "${ip[@]}"
    COORDINATOR="<IP of $(slice_name 0) worker 0>"
  else
    COORDINATOR=$(run "${ip[@]}")
    [[ -n $COORDINATOR ]] || die "no IP address for worker 0 of $(slice_name 0); pass --coordinator"
  fi
fi

# The command line for the workers of slice $1.
remote_command() {
  local envs=("${ENVS[@]}") env_prefix=""
  if ((NUM_SLICES > 1)); then
    envs=("MEGASCALE_COORDINATOR_ADDRESS=$COORDINATOR" "MEGASCALE_NUM_SLICES=$NUM_SLICES"
      "MEGASCALE_SLICE_ID=$1" "MEGASCALE_PORT=$MEGASCALE_PORT" "${envs[@]}")
  fi
  if ((${#envs[@]})); then
    env_prefix="env $(quote_args "${envs[@]}") "
  fi
  local steps=(
    "$TRAIN_PATTERN_STEP"
    "cd ~/$REMOTE_REPO"
    "mkdir -p ~/$REMOTE_LOGS"
    "if $running; then echo \"\$(hostname): lm train is already running (stop.sh stops it)\" >&2; exit 1; fi"
    "set -- $venv/bin/lm $(quote_args "${train[@]}")"
    "echo \"=== \$(date -u +%Y-%m-%dT%H:%M:%SZ) \$(hostname): \$*\" >> $log"
    "(setsid nohup $env_prefix\"\$@\" >> $log 2>&1 < /dev/null &)"
  )
  if [[ ! $CHECK_AFTER =~ ^0*(\.0*)?$ ]]; then
    steps+=("sleep $CHECK_AFTER"
      "if $running; then echo \"\$(hostname): lm train started; log $log\"; else echo \"\$(hostname): lm train is not running after $CHECK_AFTER s (failed, or already finished); the end of $log:\" >&2; tail -n 20 $log >&2; exit 1; fi")
  else
    steps+=("echo \"\$(hostname): lm train launched; log $log\"")
  fi
  local remote
  remote=$(printf ' && %s' "${steps[@]}")
  printf '%s' "${remote# && }"
}

# shellcheck disable=SC2329  # called through on_slices
launch_slice() {
  ssh_slice "$1" "$(remote_command "$1")"
}

running="pgrep -f \"\$pat\" > /dev/null"
on_slices launch_slice
