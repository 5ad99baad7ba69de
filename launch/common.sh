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

# Quote an argument list into one string for a remote shell (gcloud --command).
quote_args() { local out="" a; for a in "$@"; do out+=" $(printf '%q' "$a")"; done; echo "${out# }"; }
