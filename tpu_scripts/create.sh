#!/usr/bin/env bash
# Create a Cloud TPU VM or pod slice: on demand, as spot capacity, or through a queued resource;
# with --num-slices=N, N slices for one Multislice job (a queued resource of N nodes).
#
# Usage: create.sh --name=NAME --zone=ZONE --accelerator-type=TYPE [options] [-- GCLOUD_ARGS...]
#
#   --name=NAME               TPU VM name (and queued-resource id with --queued)     required
#   --zone=ZONE               e.g. us-east5-a (v5p), us-central2-b (v4), us-east1-d (v6e)  required
#   --accelerator-type=TYPE   v4-8, v5p-32, v5litepod-16, v6e-8, ... (alias --accelerator)  required
#   --version=VERSION         TPU runtime; default by generation: v2/v3/v4 tpu-ubuntu2204-base,
#                             v5p v2-alpha-tpuv5, v5litepod v2-alpha-tpuv5-lite, v6e v2-alpha-tpuv6e
#   --project=PROJECT         default: gcloud's configured project
#   --spot                    spot capacity: cheaper, can be preempted at any time
#   --queued                  `gcloud compute tpus queued-resources create`: waits in a queue
#                             until the capacity exists (state WAITING_FOR_RESOURCES -> ACTIVE)
#   --num-slices=N            N slices of --accelerator-type joined by the data-center network
#                             (Multislice), named NAME-0 ... NAME-(N-1): a queued resource
#                             with --node-count=N (implies --queued); the other scripts take
#                             the same --name and --num-slices
#   --reserved                use your reservation
#   --valid-until-duration=D  with --queued: give up if not provisioned within D (e.g. 6h)
#   --dry-run                 print the gcloud command, run nothing
#   -h, --help                this help
#   -- GCLOUD_ARGS            passed to gcloud as they are (--service-account=..., --network=...)
#
# Examples:
#   create.sh --name=lm-v5p-32 --zone=us-east5-a --accelerator-type=v5p-32 --queued --spot
#   create.sh --name=lm-v4-8 --zone=us-central2-b --accelerator-type=v4-8
#   create.sh --name=lm-ms --zone=us-east5-a --accelerator-type=v5p-256 --num-slices=4
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ACCELERATOR=""
VERSION=""
SPOT=0
QUEUED=0
RESERVED=0
VALID_UNTIL=""
EXTRA=()

while (($#)); do
  case $1 in
    --accelerator-type | --accelerator-type=* | --accelerator | --accelerator=*)
      opt ACCELERATOR "$@" ;;
    --version | --version=* | --runtime-version | --runtime-version=*) opt VERSION "$@" ;;
    --valid-until-duration | --valid-until-duration=*) opt VALID_UNTIL "$@" ;;
    --spot) SPOT=1 OPT_SHIFT=1 ;;
    --queued) QUEUED=1 OPT_SHIFT=1 ;;
    --reserved) RESERVED=1 OPT_SHIFT=1 ;;
    --)
      shift
      EXTRA=("$@")
      break
      ;;
    *) common_opt "$@" ;;
  esac
  shift "$OPT_SHIFT"
done

require_tpu
require ACCELERATOR --accelerator-type "e.g. --accelerator-type=v5p-32"
[[ $ACCELERATOR =~ ^v[0-9]+[a-z]*-[0-9]+$ ]] ||
  die "--accelerator-type=$ACCELERATOR: expected GENERATION-SIZE, e.g. v4-8, v5p-32, v5litepod-16, v6e-8"
if ((NUM_SLICES > 1)); then QUEUED=1; fi  # Multislice is provisioned through queued resources
[[ -z $VALID_UNTIL || $QUEUED == 1 ]] || die "--valid-until-duration needs --queued"

# The runtime image for a generation. v2/v3/v4 count TensorCores in the type, as does v5p
# (v5p-32 = 16 chips); v5litepod and v6e count chips.
default_version() {
  case $1 in
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) return 1 ;;
  esac
}

# "16 JAX devices on 4 hosts" for the mesh flags; empty for a generation we do not know.
describe_slice() {
  local size=${1##*-} devices hosts
  case $1 in
    v2-* | v3-*) devices=$size hosts=$(((size + 7) / 8)) ;;               # a device per core
    v4-* | v5p-*) devices=$((size / 2)) hosts=$(((size / 2 + 3) / 4)) ;;  # a device per chip
    v5litepod-* | v5e-* | v6e-*)
      devices=$size
      if ((size <= 8)); then hosts=1; else hosts=$((size / 4)); fi
      ;;
    *) return 0 ;;
  esac
  echo "$1: $devices JAX devices on $hosts host(s)"
}

if [[ -z $VERSION ]]; then
  VERSION=$(default_version "$ACCELERATOR") ||
    die "no default runtime version for --accelerator-type=$ACCELERATOR; pass --version=..."
fi

location_args
if ((NUM_SLICES > 1)); then  # its nodes are NAME-0 ... NAME-(N-1)
  cmd=(gcloud compute tpus queued-resources create "$NAME" --node-count="$NUM_SLICES"
    --node-prefix="$NAME" "${LOCATION[@]}" --accelerator-type="$ACCELERATOR"
    --runtime-version="$VERSION")
  if [[ -n $VALID_UNTIL ]]; then cmd+=(--valid-until-duration="$VALID_UNTIL"); fi
elif ((QUEUED)); then
  cmd=(gcloud compute tpus queued-resources create "$NAME" --node-id="$NAME" "${LOCATION[@]}"
    --accelerator-type="$ACCELERATOR" --runtime-version="$VERSION")
  if [[ -n $VALID_UNTIL ]]; then cmd+=(--valid-until-duration="$VALID_UNTIL"); fi
else
  cmd=(gcloud compute tpus tpu-vm create "$NAME" "${LOCATION[@]}"
    --accelerator-type="$ACCELERATOR" --version="$VERSION")
fi
if ((SPOT)); then cmd+=(--spot); fi
if ((RESERVED)); then cmd+=(--reserved); fi
cmd+=("${EXTRA[@]}")

slice=$(describe_slice "$ACCELERATOR")
if [[ -n $slice ]]; then
  if ((NUM_SLICES > 1)); then slice="$NUM_SLICES slices $(slice_name 0) ... $(slice_name $((NUM_SLICES - 1))), each $slice"; fi
  note "$slice"
fi
run "${cmd[@]}"

if ((QUEUED)); then
  note "queued; the VM exists once this says ACTIVE (then run setup.sh):"
  note "  gcloud compute tpus queued-resources describe $NAME ${LOCATION[*]} --format='value(state.state)'"
fi
