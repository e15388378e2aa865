#!/usr/bin/env bash
# Creates a TPU VM, or uses it when one of that name already exists.
#
#   launch/tpu_vm/create.sh --name dreamix --zone us-central2-b --type v4-32 [--project P]
#       [--version RUNTIME] [--spot] [--existing] [--dry-run]
#
# --version: the TPU software version (default by family: tpu-ubuntu2204-base for v2-v4,
# v2-alpha-tpuv5-lite for v5e, v2-alpha-tpuv5 for v5p, v2-alpha-tpuv6e for v6e). --existing skips the
# existence check and creation (the VM is already there). With --dry-run the existence check is not
# run and the create command is printed.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VERSION="" SPOT=0 EXISTING=0
while (($#)); do
  take_common_option "$@"
  if ((SHIFT == 0)); then
    case "$1" in
      --version | --version=*) value_of --version "$@" && VERSION="$VALUE" ;;
      --spot) SPOT=1 SHIFT=1 ;;
      --existing) EXISTING=1 SHIFT=1 ;;
      *) die "unknown option '$1' (see the header of $0)." ;;
    esac
  fi
  shift "$SHIFT"
done
require_tpu
[[ -n "$TYPE" ]] || die "give the accelerator type: --type v4-32 (or v5litepod-16, v5p-8, ...)."
hosts="$(num_hosts)"

if [[ -z "$VERSION" ]]; then
  case "${TYPE%%-*}" in
    v5litepod | v5e) VERSION="v2-alpha-tpuv5-lite" ;;
    v5p) VERSION="v2-alpha-tpuv5" ;;
    v6e) VERSION="v2-alpha-tpuv6e" ;;
    *) VERSION="tpu-ubuntu2204-base" ;;
  esac
fi

note "TPU VM $NAME: $TYPE, $hosts host(s), zone $ZONE, software $VERSION"
gcloud_tpu_flags
if ((EXISTING)); then
  note "--existing: using the TPU VM $NAME as it is"
  exit 0
fi
if ((!DRY_RUN)) && gcloud compute tpus tpu-vm describe "$NAME" "${GCLOUD_FLAGS[@]}" >/dev/null 2>&1; then
  note "TPU VM $NAME exists: using it"
  exit 0
fi
create=(gcloud compute tpus tpu-vm create "$NAME" "${GCLOUD_FLAGS[@]}" --accelerator-type="$TYPE"
  --version="$VERSION")
if ((SPOT)); then create+=(--spot); fi
run "${create[@]}"
