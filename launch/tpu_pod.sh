#!/usr/bin/env bash
# TPU pod: copy the code to every worker, install it, then train (and evaluate) on
# all workers at once, logging to a GCS workdir. Each worker runs the same
# command; jax.distributed.initialize() discovers the pod from the TPU metadata.
#
#   TPU_NAME=my-v4-64 ZONE=us-central2-b PROJECT=my-proj \
#   launch/tpu_pod.sh --config configs/m5_mmt.py:size=base --workdir gs://bucket/m5/run1 \
#       --config.input.data_dir=gs://bucket/tfds [--config.x=y ...]
#
# Environment: TPU_NAME, ZONE (required), PROJECT (optional), REMOTE_DIR (code dir
# on the workers, default ~/m5_jax), EVAL=1 to run the eval binaries after
# training (on worker 0 only: the eval binaries are single-process, so one per
# worker would be independent evaluators writing the same files), DRY_RUN=1 to print,
# ALLOW_DIRTY=1 to ship HEAD although the checkout has uncommitted changes.
#
# It ships the last commit (`git archive HEAD`), not the working tree: with
# uncommitted or untracked files it lists them and refuses, since the pod would
# run code without them.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$(dirname "$0")/.."

: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
REMOTE_DIR=${REMOTE_DIR:-m5_jax}
gcloud_args=(--zone "$ZONE" --worker=all)
[[ -n "${PROJECT:-}" ]] && gcloud_args+=(--project "$PROJECT")

parse_train_args "launch/tpu_pod.sh --config FILE.py[:ARGS] --workdir gs://... [--config.x=y ...]" "$@"
[[ "$workdir" == gs://* ]] || echo "warning: workdir $workdir is not on GCS; each worker would write its own copy" >&2

# 1. Ship the code: a tarball of HEAD's files, copied to every worker.
changed=$(git status --porcelain --untracked-files=normal)
if [[ -n "$changed" ]]; then
  count=$(wc -l <<<"$changed")
  {
    echo "$(if [[ "${ALLOW_DIRTY:-0}" == "1" ]]; then echo WARNING; else echo error; fi):" \
      "$count uncommitted change(s) will NOT reach the pod; it ships HEAD" \
      "($(git rev-parse --short HEAD)) via git archive:"
    sed 's/^/    /' <<<"$changed"
  } >&2
  if [[ "${ALLOW_DIRTY:-0}" != "1" ]]; then
    echo "Commit them, or set ALLOW_DIRTY=1 to ship HEAD without them." >&2
    exit 1
  fi
fi
tarball=$(mktemp -u /tmp/m5_jax_code.XXXXXX).tar.gz
run git archive --format=tar.gz -o "$tarball" HEAD
run gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:/tmp/m5_jax_code.tar.gz" "${gcloud_args[@]}"

# 2. Install on every worker (TPU jaxlib instead of the CPU one).
setup="mkdir -p $REMOTE_DIR && tar xzf /tmp/m5_jax_code.tar.gz -C $REMOTE_DIR && cd $REMOTE_DIR \
&& python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt \
&& .venv/bin/pip install -q 'jax[tpu]==0.10.2' && .venv/bin/pip install -q --no-deps -e ."
run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_args[@]}" --command "$setup"

# 3. Train on all workers; TF must not grab the TPU (it only feeds data).
env_vars="TF_CPP_MIN_LOG_LEVEL=2 TPU_STDERR_LOG_LEVEL=1 GLIBC_TUNABLES=$GLIBC_TUNABLES"
train_cmd="cd $REMOTE_DIR && $env_vars .venv/bin/python -m m5_jax.train $(quote_args --config "$config" --workdir "$workdir" "${extra[@]}")"
run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_args[@]}" --command "$train_cmd"

# 4. Evaluate from the checkpoints, on worker 0 only (its local chips).
eval_args=("${gcloud_args[@]/--worker=all/--worker=0}")
if [[ "${EVAL:-0}" == "1" ]]; then
  for task in coarse_retrieval fine_retrieval classification clustering; do
    run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${eval_args[@]}" \
      --command "cd $REMOTE_DIR && $env_vars .venv/bin/python -m m5_jax.evaluate.$task $(quote_args --workdir "$workdir")"
  done
fi
