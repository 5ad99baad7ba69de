#!/usr/bin/env bash
# Local run: pretrain, then score all four downstream tasks, on this machine's devices.
#
#   launch/local.sh --config configs/m5_mmt.py:size=tiny,runlocal --workdir /tmp/m5 [--config.x=y ...]
#
# Everything after --workdir DIR is passed to the train binary. Set EVAL=0 to skip
# evaluation, DRY_RUN=1 to print the commands.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
preload_tcmalloc

parse_train_args "launch/local.sh --config FILE.py[:ARGS] --workdir DIR [--config.x=y ...]" "$@"

run "$PY" -m m5_jax.train --config "$config" --workdir "$workdir" "${extra[@]}"
if [[ "${EVAL:-1}" == "1" ]]; then
  for task in coarse_retrieval fine_retrieval classification clustering; do
    run "$PY" -m m5_jax.evaluate."$task" --workdir "$workdir"
  done
fi
