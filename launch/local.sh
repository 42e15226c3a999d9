#!/usr/bin/env bash
# Run one sora-jax command as N local processes, each with K fake CPU devices: N "hosts" on one
# machine, joined by jax.distributed (CPU collectives over gloo). For testing multi-host behaviour
# (per-process data shares, process-0-only writing, checkpoints, failures) without a cluster.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: launch/local.sh [--processes N] [--devices-per-process K] [--port PORT] [--dry-run] -- COMMAND [ARGS...]

Starts N copies of `sora-jax COMMAND ARGS...` as processes 0..N-1 of one run.

  --processes N            processes ("hosts") to start (default 2)
  --devices-per-process K  fake CPU devices per process (default 1)
  --port PORT              coordinator port on 127.0.0.1 (default: a free port)
  --heartbeat SECONDS      a process silent this long counts as failed (default 20)
  --dry-run                print the commands, start nothing
  -h, --help               this text

Each process's output is prefixed with [process I]. If a process fails, the others are stopped
and the script exits with that process's status. SIGTERM/SIGINT are passed on to every process
(a preemption notice: they save a checkpoint at the next step boundary and exit).

The sora-jax executable is $SORA_JAX if set, else `sora-jax` on PATH, else .venv/bin/sora-jax.

Example:
  launch/local.sh --processes 2 --devices-per-process 2 -- \
    train --config experiments/world_tiny.py --workdir runs/world_tiny_2x2
USAGE
}

processes=2
devices=1
port=""
heartbeat=20
grace=15
dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --processes) processes="$2"; shift 2 ;;
    --devices-per-process) devices="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --heartbeat) heartbeat="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "local.sh: unknown argument '$1' (the sora-jax command goes after --)" >&2; exit 2 ;;
  esac
done
if [[ $# -eq 0 ]]; then
  echo "local.sh: no command given; put the sora-jax command after --, e.g. -- train --config ..." >&2
  exit 2
fi
for name in processes devices heartbeat; do
  if ! [[ "${!name}" =~ ^[1-9][0-9]*$ ]]; then
    echo "local.sh: --${name/devices/devices-per-process} must be a positive integer, got '${!name}'" >&2
    exit 2
  fi
done

if [[ -n "${SORA_JAX:-}" ]]; then
  sora_jax="$SORA_JAX"
elif command -v sora-jax >/dev/null 2>&1; then
  sora_jax="sora-jax"
else
  sora_jax="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/sora-jax"
fi
if [[ -z "$port" ]]; then
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi

env_of() {  # The environment that makes process $1 one host of the run.
  printf '%s ' "JAX_PLATFORMS=cpu" \
    "XLA_FLAGS=--xla_force_host_platform_device_count=$devices" \
    "SORA_JAX_COORDINATOR=127.0.0.1:$port" \
    "SORA_JAX_NUM_PROCESSES=$processes" \
    "SORA_JAX_PROCESS_ID=$1" \
    "SORA_JAX_HEARTBEAT_TIMEOUT=$heartbeat"
}

if [[ $dry_run -eq 1 ]]; then
  for ((i = 0; i < processes; i++)); do
    line="env $(env_of "$i")$(printf '%q ' "$sora_jax" "$@")"
    echo "+ ${line% }"
  done
  exit 0
fi

pids=()
stop_all() {  # $1: signal
  for pid in "${pids[@]}"; do kill "-$1" "$pid" 2>/dev/null || true; done
}
trap 'stop_all TERM' TERM INT

for ((i = 0; i < processes; i++)); do
  # shellcheck disable=SC2046  # env_of prints separate NAME=VALUE words on purpose.
  env $(env_of "$i") "$sora_jax" "$@" > >(sed -u "s/^/[process $i] /") 2>&1 &
  pids+=("$!")
done

status=0
running=("${pids[@]}")
while [[ ${#running[@]} -gt 0 ]]; do
  finished=""
  code=0
  wait -n -p finished "${running[@]}" || code=$?
  if [[ -z "$finished" ]]; then  # Interrupted by a trapped signal: keep waiting for the processes.
    continue
  fi
  still=()
  for pid in "${running[@]}"; do [[ "$pid" == "$finished" ]] || still+=("$pid"); done
  running=("${still[@]}")
  if [[ $code -ne 0 && $status -eq 0 ]]; then
    for ((i = 0; i < processes; i++)); do
      if [[ "${pids[$i]}" == "$finished" ]]; then failed=$i; fi
    done
    echo "local.sh: process $failed exited with status $code; the others stop within the" \
      "heartbeat timeout (${heartbeat}s), or are killed ${grace}s later" >&2
    status=$code
    # They notice by themselves (and say so in their logs); this only catches a stuck one.
    (sleep $((heartbeat + grace)) && stop_all KILL) &
    watchdog=$!
  fi
done
if [[ -n "${watchdog:-}" ]]; then kill "$watchdog" 2>/dev/null || true; fi
wait  # the output filters
exit "$status"
