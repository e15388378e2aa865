#!/usr/bin/env bash
# Everything in one go: create (or reuse) a TPU VM, install the project on every host, put data on
# every host, run a job on every host.
#
#   launch/tpu_vm/launch.sh --name dreamix --zone us-central2-b --type v4-32 \
#       --config configs/edit.py --workdir /tmp/dreamix [--project P] [--existing] \
#       [--data gs://bucket/cascade=/home/me/data/cascade ...] [--repo-url URL] [--dry-run] \
#       [-- --config.checkpoint=/home/me/data/cascade ...]
#
# --data SRC=DEST may repeat (see data.sh; SRC gs:// or local). Other options go to the step that
# takes them: --version/--spot/--existing to create.sh, --repo-url/--ref to install.sh,
# --config/--workdir/--fetch-to and the job overrides after `--` to run.sh.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

COMMON=() CREATE=() INSTALL=() DATA=() RUN=() OVERRIDES=()
while (($#)); do
  take_common_option "$@"
  if ((SHIFT > 0)); then
    COMMON+=("${@:1:SHIFT}")
  else
    case "$1" in
      --version | --version=*) value_of --version "$@" && CREATE+=(--version="$VALUE") ;;
      --spot | --existing) CREATE+=("$1") SHIFT=1 ;;
      --repo-url | --repo-url=*) value_of --repo-url "$@" && INSTALL+=(--repo-url="$VALUE") ;;
      --ref | --ref=*) value_of --ref "$@" && INSTALL+=(--ref="$VALUE") ;;
      --data | --data=*)
        value_of --data "$@"
        [[ "$VALUE" == *=* ]] || die "--data takes SRC=DEST, got '$VALUE'."
        DATA+=("$VALUE")
        ;;
      --config | --config=* | --workdir | --workdir=* | --fetch-to | --fetch-to=*)
        key="${1%%=*}" && value_of "$key" "$@" && RUN+=("$key=$VALUE") ;;
      --) shift && OVERRIDES=(-- "$@") && break ;;
      *) die "unknown option '$1' (see the header of $0)." ;;
    esac
  fi
  shift "$SHIFT"
done

here="$(dirname "${BASH_SOURCE[0]}")"
"$here/create.sh" "${COMMON[@]}" "${CREATE[@]}"
"$here/install.sh" "${COMMON[@]}" "${INSTALL[@]}"
for pair in "${DATA[@]}"; do
  "$here/data.sh" "${COMMON[@]}" --src="${pair%%=*}" --dest="${pair#*=}"
done
"$here/run.sh" "${COMMON[@]}" "${RUN[@]}" "${OVERRIDES[@]}"
