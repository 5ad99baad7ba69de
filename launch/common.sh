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

# tcmalloc for the train step on CPU: XLA:CPU allocates each step's temporaries as one
# block (1 GB at small, 3.4 GB at base, batch 8) from a worker thread, and glibc maps such
# a block fresh and unmaps it when freed, every step, so the kernel zero-fills it again
# (850k page faults and 1.5 CPU-s per base step). tcmalloc keeps the block for the next
# step (benchmarks/RESULTS.md section 7). Debian/Ubuntu: apt install libtcmalloc-minimal4.
# Hosts with a GPU or TPU keep glibc: there the host runs the input pipeline, which on
# tcmalloc holds the GIL 1.5-2.7x longer in process (benchmarks/results/input_pipeline.md).
# M5_TCMALLOC=path preloads that build anywhere; M5_TCMALLOC= (empty) turns it off.
preload_tcmalloc() {
  if [[ -z "${M5_TCMALLOC+set}" ]]; then
    if compgen -G '/dev/nvidia[0-9]*' >/dev/null || compgen -G '/dev/accel[0-9]*' >/dev/null; then
      return 0
    fi
    M5_TCMALLOC=""
    local lib
    for lib in /usr/lib/{x86_64,aarch64}-linux-gnu/libtcmalloc{_minimal,}.so.4; do
      if [[ -e "$lib" ]]; then M5_TCMALLOC="$lib"; break; fi
    done
    [[ -n "$M5_TCMALLOC" ]] || echo "note: no tcmalloc (apt install libtcmalloc-minimal4):" \
      "a train step on CPU runs ~1.1x slower on glibc malloc" >&2
  fi
  if [[ -n "$M5_TCMALLOC" && ":${LD_PRELOAD:-}:" != *":$M5_TCMALLOC:"* ]]; then
    [[ -e "$M5_TCMALLOC" ]] || die "M5_TCMALLOC=$M5_TCMALLOC does not exist"
    export LD_PRELOAD="$M5_TCMALLOC${LD_PRELOAD:+:$LD_PRELOAD}"
    # Its report of every allocation over 1 GB would fill the log at base and above.
    export TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD="${TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD:-1099511627776}"
  fi
  return 0
}

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
