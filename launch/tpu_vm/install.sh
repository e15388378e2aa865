#!/usr/bin/env bash
# Installs the project on every host of a TPU VM: the repository's committed HEAD (git archive) is
# copied to each host, or cloned there with --repo-url, into ~/dreamix_jax, and installed into
# ~/venv with JAX for TPU (the jax version pinned in requirements.txt).
#
#   launch/tpu_vm/install.sh --name dreamix --zone us-central2-b [--project P]
#       [--repo-url URL [--ref REF]] [--dry-run]
#
# Uncommitted changes are not copied: commit them first (or push them and use --repo-url).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REPO_URL="" REF="main"
while (($#)); do
  take_common_option "$@"
  if ((SHIFT == 0)); then
    case "$1" in
      --repo-url | --repo-url=*) value_of --repo-url "$@" && REPO_URL="$VALUE" ;;
      --ref | --ref=*) value_of --ref "$@" && REF="$VALUE" ;;
      *) die "unknown option '$1' (see the header of $0)." ;;
    esac
  fi
  shift "$SHIFT"
done
require_tpu

jax_version="$(sed -n 's/^jax==\([^ ]*\).*/\1/p' "$REPO_DIR/requirements.txt")"
[[ -n "$jax_version" ]] || die "requirements.txt pins no jax version (expected a line jax==X)."

if [[ -n "$REPO_URL" ]]; then
  note "cloning $REPO_URL@$REF on every host"
  fetch="rm -rf $REMOTE_DIR && git clone --depth=1 --branch=$(quote "$REF") $(quote "$REPO_URL") $REMOTE_DIR"
else
  archive="${TMPDIR:-/tmp}/dreamix_jax_src.tar.gz"
  note "copying the committed HEAD of $REPO_DIR to every host"
  run git -C "$REPO_DIR" archive --format=tar.gz --output="$archive" HEAD
  copy_to_all_hosts "$archive" "~/dreamix_jax_src.tar.gz"
  fetch="rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR && tar -xzf ~/dreamix_jax_src.tar.gz -C $REMOTE_DIR"
fi
on_all_hosts "set -e; $fetch && python3 -m venv $REMOTE_VENV && $REMOTE_VENV/bin/pip install -q -U pip && $REMOTE_VENV/bin/pip install -q -e $REMOTE_DIR 'jax[tpu]==$jax_version' && $REMOTE_VENV/bin/python -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.device_count())'"
