#!/usr/bin/env bash
# Delete a TPU VM, or with --queued its queued resource (and the VM it holds). Checkpoints on
# GCS stay; anything only on the VM's disks (~/lm_logs included) goes.
#
# Usage: delete.sh --name=NAME --zone=ZONE [options]
#
#   --name=NAME         TPU VM name (the queued-resource id with --queued)            required
#   --zone=ZONE         its zone                                                      required
#   --queued            delete the queued resource made by `create.sh --queued` (with --force,
#                       which deletes its TPU VM too); works while it still waits in the queue
#   --num-slices=N      the slices NAME-0 ... NAME-(N-1); with --queued (as create.sh made
#                       them) the one queued resource NAME goes, and its slices with it
#   --yes               do not ask for confirmation (gcloud --quiet)
#   --async             return without waiting for the deletion to finish
#   --project=PROJECT   default: gcloud's configured project
#   --dry-run           print the gcloud command, run nothing
#   -h, --help          this help
#
# Example:
#   delete.sh --name=lm-v5p-32 --zone=us-east5-a --queued
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

QUEUED=0
YES=0
ASYNC=0

while (($#)); do
  case $1 in
    --queued) QUEUED=1 OPT_SHIFT=1 ;;
    --yes | -y) YES=1 OPT_SHIFT=1 ;;
    --async) ASYNC=1 OPT_SHIFT=1 ;;
    *) common_opt "$@" ;;
  esac
  shift "$OPT_SHIFT"
done

require_tpu

location_args
flags=()
if ((ASYNC)); then flags+=(--async); fi
if ((YES)); then flags+=(--quiet); fi
if ((QUEUED)); then
  run gcloud compute tpus queued-resources delete "$NAME" "${LOCATION[@]}" --force "${flags[@]}"
else
  for ((i = 0; i < NUM_SLICES; i++)); do
    run gcloud compute tpus tpu-vm delete "$(slice_name "$i")" "${LOCATION[@]}" "${flags[@]}"
  done
fi
