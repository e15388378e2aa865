# Shared pieces of the TPU VM scripts (sourced, not run): option parsing, dry-run aware command
# execution, host counts of accelerator types, and gcloud ssh/scp on every worker.
#
# Every script takes the TPU as `--name NAME --zone ZONE [--project PROJECT]` and `--dry-run`,
# which prints each gcloud command (shell-quoted, one per line, ready to paste) instead of running it.

set -euo pipefail

LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$LAUNCH_DIR/../.." && pwd)"

NAME="" ZONE="" PROJECT="" TYPE="" HOSTS="" DRY_RUN=0
REMOTE_DIR='~/dreamix_jax'  # the project on every host (relative to the remote home)
REMOTE_VENV='~/venv'

die() {
  echo "error: $*" >&2
  exit 2
}

# quote ARG: ARG as one shell word (like Python's shlex.quote).
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_@%+=:,./~-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# quote_all ARGS...: the arguments as one shell-quoted command line.
quote_all() {
  local out="" arg
  for arg in "$@"; do
    out+="${out:+ }$(quote "$arg")"
  done
  printf '%s' "$out"
}

# run CMD ARGS...: runs the command, or prints it with --dry-run.
run() {
  if ((DRY_RUN)); then
    quote_all "$@"
    echo
  else
    echo "+ $(quote_all "$@")" >&2
    "$@"
  fi
}

# note TEXT: a comment line in the dry-run listing (on stderr when running for real).
note() {
  if ((DRY_RUN)); then echo "# $*"; else echo "# $*" >&2; fi
}

# take_common_option "$@": consumes one common option; sets SHIFT to how many words it used (0 when
# the first word is not a common option).
take_common_option() {
  SHIFT=1
  case "$1" in
    --name=*) NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --type=*) TYPE="${1#*=}" ;;
    --hosts=*) HOSTS="${1#*=}" ;;
    --name | --zone | --project | --type | --hosts)
      (($# >= 2)) || die "$1 needs a value."
      local key="${1#--}"
      printf -v "${key^^}" '%s' "$2"
      SHIFT=2
      ;;
    --dry-run) DRY_RUN=1 ;;
    *) SHIFT=0 ;;
  esac
}

# value_of OPTION "$@": the value of `--opt=v` or `--opt v` (for script-specific options); sets
# SHIFT like take_common_option.
value_of() {
  local opt="$1"
  shift
  if [[ "$1" == "$opt="* ]]; then
    VALUE="${1#*=}"
    SHIFT=1
  else
    (($# >= 2)) || die "$opt needs a value."
    VALUE="$2"
    SHIFT=2
  fi
}

require_tpu() {
  [[ -n "$NAME" ]] || die "give the TPU VM's name: --name NAME."
  [[ -n "$ZONE" ]] || die "give the TPU VM's zone: --zone ZONE (e.g. us-central2-b)."
}

# hosts_of_type TYPE: how many hosts (VMs) a TPU slice of accelerator type TYPE has.
# v2/v3/v4/v5p count TensorCores (8 per host); v5e (v5litepod) and v6e count chips: up to 8 on one
# host, 4 per host in multi-host slices.
hosts_of_type() {
  local type="$1" family size
  [[ "$type" =~ ^([a-z0-9]+)-([0-9]+)$ ]] ||
    die "accelerator type '$type' is not of the form FAMILY-SIZE (e.g. v4-32, v5litepod-16)."
  family="${BASH_REMATCH[1]}" size="${BASH_REMATCH[2]}"
  case "$family" in
    v2 | v3 | v4 | v5p) echo $(((size + 7) / 8)) ;;
    v5litepod | v5e | v6e) if ((size <= 8)); then echo 1; else echo $((size / 4)); fi ;;
    *) die "unknown TPU family '$family' in '$type'; give the host count with --hosts N." ;;
  esac
}

# num_hosts: --hosts, else derived from --type.
num_hosts() {
  if [[ -n "$HOSTS" ]]; then
    [[ "$HOSTS" =~ ^[1-9][0-9]*$ ]] || die "--hosts must be a positive integer, got '$HOSTS'."
    echo "$HOSTS"
  elif [[ -n "$TYPE" ]]; then
    hosts_of_type "$TYPE"
  else
    die "give the accelerator type (--type v4-32) or the host count (--hosts N)."
  fi
}

gcloud_tpu_flags() {
  GCLOUD_FLAGS=(--zone="$ZONE")
  if [[ -n "$PROJECT" ]]; then GCLOUD_FLAGS+=(--project="$PROJECT"); fi
}

# on_all_hosts COMMAND: runs the remote shell command on every worker of the TPU VM at once.
on_all_hosts() {
  gcloud_tpu_flags
  run gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_FLAGS[@]}" --worker=all --command="$1"
}

# copy_to_all_hosts SRC DEST: copies a local file or folder to DEST on every worker.
copy_to_all_hosts() {
  gcloud_tpu_flags
  run gcloud compute tpus tpu-vm scp --recurse "$1" "$NAME:$2" "${GCLOUD_FLAGS[@]}" --worker=all
}
