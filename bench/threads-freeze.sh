#!/bin/bash
# How long ckpt keeps a process frozen, against its number of threads (1, 17, 65, 257: the
# target's main thread plus 0/16/64/256 workers, a third of them spinning, a third in futex
# waits, a third sleeping), beside the limit issue 10 sets: a 64-thread process frozen at most
# a few milliseconds longer than a single-threaded one (taken here as +5 ms).
# usage: bench/threads-freeze.sh [CRS_BINARY]   (env RUNS=9, WORKERS="0 16 64 256"; CRIU=path
# to a criu binary to measure it beside). Root.
# Prints, per thread count, min / median / max of `ckpt -v`'s "frozen" figure over RUNS
# checkpoints to /dev/null (the process runs on between them); with CRIU, the same of
# `criu dump --leave-running`'s freezing + frozen time (its stats-dump: from its first stop
# of the process to its resume, the span crs's figure covers), dumping to a tmpfs.
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

criu_frozen() { # dir -> freezing+frozen ms from CRIU's stats-dump
  python3 - "$1/stats-dump" <<'PY'
import struct, sys
b = open(sys.argv[1], 'rb').read()
n = struct.unpack('<I', b[8:12])[0]
def fields(pb):
    i, out = 0, {}
    def varint():
        nonlocal i
        v = sh = 0
        while True:
            c = pb[i]; i += 1; v |= (c & 0x7f) << sh; sh += 7
            if c < 0x80: return v
    while i < len(pb):
        key = varint(); f, wt = key >> 3, key & 7
        if wt == 0: out[f] = varint()
        elif wt == 2: l = varint(); out[f] = pb[i:i + l]; i += l
        else: raise SystemExit('unexpected wire type')
    return out
d = fields(fields(b[12:12 + n])[1])   # stats_entry.dump: freezing_time 1, frozen_time 2 (us)
print('%.1f' % ((d.get(1, 0) + d.get(2, 0)) / 1000))
PY
}

if [ -n "${CRIU:-}" ]; then
  printf "%-8s %-28s %s\n" threads "crs frozen ms: min med max" "criu freezing+frozen ms: min med max"
else
  printf "%-8s %s\n" threads "frozen ms: min median max"
fi
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
  if [ -n "${CRIU:-}" ]; then
    peer=$(for i in $(seq "$RUNS"); do
      d=$(mktemp -d /dev/shm/crs-criu.XXXXXX)
      "$CRIU" dump -t "$pid" -D "$d" --leave-running --shell-job -o dump.log >/dev/null 2>&1 ||
        { echo "criu dump failed: $(tail -3 "$d/dump.log")" >&2; rm -rf "$d"; exit 1; }
      criu_frozen "$d"
      rm -rf "$d"
    done | stats)
    printf "%-8s %-28s %s\n" $((n + 1)) "$line" "$peer"
  else
    printf "%-8s %s\n" $((n + 1)) "$line"
  fi
  touch "$work/go"
  wait 2>/dev/null || true
done
awk -v b="$base" 'BEGIN {printf "limit: 65 threads frozen at most %.1f ms (1 thread'"'"'s median + 5)\n", b + 5}'
