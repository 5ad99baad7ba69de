# Shared helpers for the launch scripts. Source it; do not run it.
# DRY_RUN=1 prints every command (shell-quoted, one per line, prefixed '+ ')
# instead of running it, so a launch can be reviewed before it spends a pod.

run() {
  if [[ "${DRY_RUN:-0}" == "1" ]]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

die() { echo "error: $*" >&2; exit 2; }

# glibc malloc for the input pipeline's short-lived buffers (~300 KB records, batches):
# keep freed memory for reuse instead of returning it to the kernel and faulting it in
# again. Page faults and page clearing were ~7% of the features pipeline's CPU; with
# these settings its CPU per example fell 15-23%, and the train step's did not change
# (benchmarks/results/input_pipeline.md). A GLIBC_TUNABLES already set wins.
M5_GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824:glibc.malloc.top_pad=67108864
export GLIBC_TUNABLES="${GLIBC_TUNABLES:-$M5_GLIBC_TUNABLES}"

# Quote an argument list into one string for a remote shell (gcloud --command).
quote_args() { local out="" a; for a in "$@"; do out+=" $(printf '%q' "$a")"; done; echo "${out# }"; }

# Parses "--config C --workdir W [extra ...]" into $config, $workdir and the array
# $extra (passed on to the train binary); dies with `usage` if either is missing.
parse_train_args() {
  local usage="$1"; shift
  config="" workdir="" extra=()
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --config) config="$2"; shift 2;;
      --workdir) workdir="$2"; shift 2;;
      *) extra+=("$1"); shift;;
    esac
  done
  [[ -n "$config" && -n "$workdir" ]] || die "usage: $usage"
}
