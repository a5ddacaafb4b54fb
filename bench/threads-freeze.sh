#!/bin/bash
# How long ckpt keeps a process frozen, against its number of threads (1, 17, 65, 257: the
# target's main thread plus 0/16/64/256 workers, a third of them spinning, a third in futex
# waits, a third sleeping), beside the limit issue 10 sets: a 64-thread process frozen at most
# a few milliseconds longer than a single-threaded one (taken here as +5 ms).
# usage: bench/threads-freeze.sh [CRS_BINARY]   (env RUNS=9, WORKERS="0 16 64 256"). Root.
# Prints, per thread count, min / median / max of `ckpt -v`'s "frozen" figure over RUNS
# checkpoints to /dev/null (the process runs on between them).
set -euo pipefail
cd "$(dirname "$0")"
CRS=$(realpath "${1:-../target/x86_64-unknown-linux-gnu/release/crs}")
RUNS=${RUNS:-9}
WORKERS=${WORKERS:-"0 16 64 256"}
work=$(mktemp -d /tmp/crs-threads.XXXXXX)
trap 'pkill -9 -f "$work/threads" 2>/dev/null || true; rm -rf "$work"' EXIT
cc -O2 -pthread -o "$work/threads" ../tests/targets/threads.c

# Runs a command with no fd above 2: a leaked one (a CI runner's pipe) would make ckpt refuse.
bare() {
  local f n
  for f in /proc/$BASHPID/fd/*; do
    n=${f##*/}
    [ "$n" -gt 2 ] && eval "exec $n>&-"
  done
  exec "$@"
}

stats() { sort -n | awk '{a[NR]=$1} END {printf "%6.1f %6.1f %6.1f", a[1], a[int((NR+1)/2)], a[NR]}'; }

printf "%-8s %s\n" threads "frozen ms: min median max"
base=""
for n in $WORKERS; do
  rm -f "$work/go" "$work/out"
  # The target waits for a line on stdin; it gets one only at the end.
  (while [ ! -e "$work/go" ]; do sleep 0.1; done; echo done) | (bare "$work/threads" "$n") >"$work/out" 2>&1 &
  for _ in $(seq 200); do grep -q ready "$work/out" && break; sleep 0.05; done
  pid=$(sed -n 's/^ready //p' "$work/out")
  line=$(for _ in $(seq "$RUNS"); do
    out=$("$CRS" ckpt -v -o /dev/null "$pid" 2>&1) || { echo "ckpt failed: $out" >&2; exit 1; }
    echo "$out" | sed -n 's/.*frozen \([0-9.]*\) ms/\1/p'
  done | stats)
  median=$(echo "$line" | awk '{print $2}')
  [ -n "$base" ] || base=$median
  printf "%-8s %s\n" $((n + 1)) "$line"
  touch "$work/go"
  wait 2>/dev/null || true
done
awk -v b="$base" 'BEGIN {printf "limit: 65 threads frozen at most %.1f ms (1 thread'"'"'s median + 5)\n", b + 5}'
