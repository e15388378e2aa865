#!/usr/bin/env bash
# Puts data (a cascade checkpoint, T5 weights, input videos, a TFDS data dir) on every host of a TPU
# VM at the same path: copied from a local folder or from Cloud Storage, or mounted with gcsfuse.
#
#   launch/tpu_vm/data.sh --name dreamix --zone us-central2-b --src gs://bucket/dreamix/t5 \
#       --dest /home/$USER/data/t5 [--mount] [--project P] [--dry-run]
#   launch/tpu_vm/data.sh --name dreamix --zone us-central2-b --src ./checkpoints/shapes --dest data/shapes
#
# --mount (gs:// sources only) mounts the bucket's folder read-only instead of copying; gcsfuse must
# be installed on the hosts. Point jobs at --dest, e.g. --config.checkpoint=<dest>.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SRC="" DEST="" MOUNT=0
while (($#)); do
  take_common_option "$@"
  if ((SHIFT == 0)); then
    case "$1" in
      --src | --src=*) value_of --src "$@" && SRC="$VALUE" ;;
      --dest | --dest=*) value_of --dest "$@" && DEST="$VALUE" ;;
      --mount) MOUNT=1 SHIFT=1 ;;
      *) die "unknown option '$1' (see the header of $0)." ;;
    esac
  fi
  shift "$SHIFT"
done
require_tpu
[[ -n "$SRC" ]] || die "give what to copy: --src gs://bucket/path or --src local/folder."
[[ -n "$DEST" ]] || die "give where it goes on every host: --dest /path/on/hosts."

dest="$(quote "$DEST")"
if [[ "$SRC" == gs://* ]]; then
  if ((MOUNT)); then
    bucket="${SRC#gs://}" && bucket="${bucket%%/*}"
    folder="${SRC#gs://$bucket}" && folder="${folder#/}"
    only_dir=""
    if [[ -n "$folder" ]]; then only_dir="--only-dir=$(quote "$folder") "; fi
    note "mounting $SRC at $DEST on every host (read-only)"
    on_all_hosts "set -e; mkdir -p $dest && gcsfuse -o ro --implicit-dirs $only_dir$(quote "$bucket") $dest"
  else
    note "copying $SRC to $DEST on every host"
    on_all_hosts "set -e; mkdir -p $dest && gcloud storage rsync --recursive $(quote "$SRC") $dest"
  fi
else
  ((!MOUNT)) || die "--mount works with gs:// sources only; '$SRC' is local (it is copied instead without --mount)."
  [[ -e "$SRC" ]] || die "local source '$SRC' does not exist."
  note "copying local $SRC to $DEST on every host"
  on_all_hosts "mkdir -p $(quote "$(dirname "$DEST")")"
  copy_to_all_hosts "$SRC" "$DEST"
fi
