#!/usr/bin/env bash
# Show the log of a run, ~/lm_logs/<run>.log, on worker 0 (where `lm train` prints progress,
# evaluations and errors) or on other workers; follows it (tail -F) until Ctrl-C by default.
#
# Usage: logs.sh --name=NAME --zone=ZONE [options]
#
#   --name=NAME         TPU VM name                                                   required
#   --zone=ZONE         its zone                                                      required
#   --run=RUN           the run (launch.sh's --run, by default its workdir's last component);
#                       default: the newest log on each worker
#   --worker=W          0 (default), another index, a list (0,2), a range (1-3) or all; with
#                       more than one worker each line starts with [hostname]
#   --num-slices=N      the slices NAME-0 ... NAME-(N-1) (create.sh --num-slices)
#   --slice=S           with --num-slices: the slice to read, 0 (default), another index or
#                       all (all at once, each line starting with [slice hostname])
#   --lines=N           show the last N lines first (default 100)
#   --no-follow         print the last lines and return
#   --project=PROJECT   default: gcloud's configured project
#   --dry-run           print the gcloud command, run nothing
#   -h, --help          this help
#
# Example:
#   logs.sh --name=lm-v5p-32 --zone=us-east5-a --run=qs-v5p
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

WORKER=0
SLICE=0
RUN=""
LINES=100
FOLLOW=1

while (($#)); do
  case $1 in
    --worker | --worker=*) worker_opt "$@" ;;
    --run | --run=*) opt RUN "$@" ;;
    --lines | --lines=*) opt LINES "$@" ;;
    --slice | --slice=*) opt SLICE "$@" ;;
    --no-follow) FOLLOW=0 OPT_SHIFT=1 ;;
    *) common_opt "$@" ;;
  esac
  shift "$OPT_SHIFT"
done

require_tpu
[[ -z $RUN ]] || check_word --run "$RUN"
[[ $LINES =~ ^[0-9]+$ ]] || die "--lines=$LINES: expected a number"
[[ $SLICE == all || ($SLICE =~ ^[0-9]+$ && SLICE -lt NUM_SLICES) ]] ||
  die "--slice=$SLICE: expected all or a slice index below --num-slices=$NUM_SLICES"

if [[ -n $RUN ]]; then
  find_log="f=~/$REMOTE_LOGS/$RUN.log"
else
  find_log="f=\$(ls -t ~/$REMOTE_LOGS/*.log 2> /dev/null | head -n 1)"
fi
tail=(tail -n "$LINES")
if ((FOLLOW)); then tail+=(-F); fi
# The log of slice $1's workers, each line prefixed where several hosts or slices speak.
logs_slice() {
  local show="${tail[*]} \"\$f\"" remote
  if [[ $SLICE == all ]]; then
    show="$show | sed -u \"s/^/[$(slice_name "$1") \$(hostname)] /\""
  elif [[ ! $WORKER =~ ^[0-9]+$ ]]; then
    show="$show | sed -u \"s/^/[\$(hostname)] /\""
  fi
  local steps=(
    "$find_log"
    "if [ -z \"\$f\" ] || [ ! -e \"\$f\" ]; then echo \"\$(hostname): no log ${RUN:+$RUN.log }in ~/$REMOTE_LOGS\" >&2; exit 1; fi"
    "$show"
  )
  remote=$(printf ' && %s' "${steps[@]}")
  ssh_slice "$1" "${remote# && }"
}

if [[ $SLICE == all ]]; then
  on_slices logs_slice
else
  logs_slice "$SLICE"
fi
