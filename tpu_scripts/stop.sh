#!/usr/bin/env bash
# Stop `lm train` on every worker: SIGTERM (pkill), wait for it to exit, then SIGKILL what is
# left. The workdir keeps every checkpoint already written; launch.sh with the same arguments
# resumes from the newest one.
#
# Usage: stop.sh --name=NAME --zone=ZONE [options]
#
#   --name=NAME         TPU VM name                                                   required
#   --zone=ZONE         its zone                                                      required
#   --project=PROJECT   default: gcloud's configured project
#   --worker=W          all (default), one index, a list (0,2) or a range (1-3)
#   --num-slices=N      every slice NAME-0 ... NAME-(N-1) at once (create.sh --num-slices)
#   --grace=SECONDS     how long to wait after SIGTERM before SIGKILL (default 120)
#   --no-kill           send SIGTERM only and return at once
#   --dry-run           print the gcloud command, run nothing
#   -h, --help          this help
#
# Note: once jax.distributed is initialized (every pod slice), JAX's preemption notifier
# catches SIGTERM instead of letting it end the process; training stops on SIGTERM only if the
# loop polls jax's preemption sync point. Hence SIGKILL after --grace seconds.
#
# Example:
#   stop.sh --name=lm-v5p-32 --zone=us-east5-a
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

GRACE=120
KILL=1

while (($#)); do
  case $1 in
    --worker | --worker=*) worker_opt "$@" ;;
    --grace | --grace=*) opt GRACE "$@" ;;
    --no-kill) KILL=0 OPT_SHIFT=1 ;;
    *) common_opt "$@" ;;
  esac
  shift "$OPT_SHIFT"
done

require_tpu
[[ $GRACE =~ ^[0-9]+$ ]] || die "--grace=$GRACE: expected a number of seconds"

steps=(
  "$TRAIN_PATTERN_STEP"
  "if ! pgrep -f \"\$pat\" > /dev/null; then echo \"\$(hostname): no lm train running\"; exit 0; fi"
  "pkill -TERM -f \"\$pat\""
  "echo \"\$(hostname): sent SIGTERM to lm train\""
)
if ((KILL)); then
  steps+=("for _ in \$(seq $GRACE); do pgrep -f \"\$pat\" > /dev/null || { echo \"\$(hostname): lm train stopped\"; exit 0; }; sleep 1; done"
    "if pkill -KILL -f \"\$pat\"; then echo \"\$(hostname): still running after $GRACE s; sent SIGKILL\"; fi")
fi
remote=$(printf ' && %s' "${steps[@]}")
ssh_workers "${remote# && }"
