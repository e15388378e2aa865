#!/usr/bin/env bash
# Runs a job (`python -m dreamix_jax.main`) on every host of a TPU VM at once.
#
#   launch/tpu_vm/run.sh --name dreamix --zone us-central2-b --type v4-32 \
#       --config configs/edit.py --workdir /tmp/dreamix [--fetch-to ./results] [--dry-run] \
#       [-- --config.finetune.steps=300 --config.checkpoint=/home/me/data/cascade ...]
#
# On a multi-host slice (more than one host, from --type or --hosts) every host starts the same
# command with --config.distributed.enabled=True: `jax.distributed` then finds the coordinator and the
# process ids from the TPU metadata, and the global mesh (--config.mesh.*, -1 fills the devices)
# spans all hosts. Process 0 writes the outputs; --fetch-to copies worker 0's workdir back here.
# Arguments after `--` are passed to the job unchanged.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONFIG="" WORKDIR="/tmp/dreamix" FETCH_TO="" OVERRIDES=()
while (($#)); do
  take_common_option "$@"
  if ((SHIFT == 0)); then
    case "$1" in
      --config | --config=*) value_of --config "$@" && CONFIG="$VALUE" ;;
      --workdir | --workdir=*) value_of --workdir "$@" && WORKDIR="$VALUE" ;;
      --fetch-to | --fetch-to=*) value_of --fetch-to "$@" && FETCH_TO="$VALUE" ;;
      --) shift && OVERRIDES=("$@") && break ;;
      *) die "unknown option '$1' (see the header of $0; job overrides go after --)." ;;
    esac
  fi
  shift "$SHIFT"
done
require_tpu
[[ -n "$CONFIG" ]] || die "give the job config: --config configs/<job>.py[:args]."
config_file="${CONFIG%%:*}"
[[ -f "$REPO_DIR/$config_file" ]] || die "no config file '$config_file' in $REPO_DIR (give a path relative to the repository, e.g. configs/edit.py)."
for override in "${OVERRIDES[@]}"; do
  [[ "$override" == --config.* ]] || die "job override '$override' must look like --config.field=value."
done
hosts="$(num_hosts)"

job=(python -m dreamix_jax.main --config="$CONFIG" --workdir="$WORKDIR")
if ((hosts > 1)); then job+=(--config.distributed.enabled=True); fi
job+=("${OVERRIDES[@]}")
note "running on $hosts host(s) (--worker=all): $(quote_all "${job[@]}")"
on_all_hosts "cd $REMOTE_DIR && source $REMOTE_VENV/bin/activate && PYTHONUNBUFFERED=1 $(quote_all "${job[@]}")"

if [[ -n "$FETCH_TO" ]]; then
  gcloud_tpu_flags
  run mkdir -p "$FETCH_TO"
  run gcloud compute tpus tpu-vm scp --recurse "$NAME:$WORKDIR" "$FETCH_TO" "${GCLOUD_FLAGS[@]}" --worker=0
fi
