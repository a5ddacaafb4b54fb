#!/bin/bash
# Two crs binaries compared on one small case, run by run: a checkpoint (ckpt -k, to
# /dev/shm) and a restore (rstrt -d) of `sleep`, the binaries taking turns (A B, then B A),
# each command timed from spawn to exit by netio. On a VM whose speed drifts within minutes,
# medians of separate batches differ by more than the change being measured; paired runs do
# not. Prints each binary's median and the median of the paired differences (B - A), in ms.
# usage: bench/ab.sh CRS_A CRS_B   (env RUNS=40)   Needs root. Each binary is named crs (the
# applet is read from the name it runs as): keep the two in directories of their own.
set -euo pipefail
cd "$(dirname "$0")"
[ $# -eq 2 ] || { echo "usage: bench/ab.sh CRS_A CRS_B" >&2; exit 2; }
A=$(realpath "$1"); B=$(realpath "$2")
RUNS=${RUNS:-40}
work=$(mktemp -d /dev/shm/crs-ab.XXXXXX)
trap 'pkill -9 -xf "sleep 100017" 2>/dev/null || true; rm -rf "$work"' EXIT
cc -O2 -o "$work/netio" netio.c
. ./lib.sh # bare

one() { # CRS -> "dump_ms restore_ms"
  local pid new
  bare setsid sleep 100017 </dev/null >/dev/null 2>&1 &
  pid=$!
  sleep 0.05
  # (ckpt says on stderr that the killed process's parent sees it die: kept apart.)
  if ! "$work/netio" time "$work/t1" "$1" ckpt -k -o "$work/img.crf" "$pid" >/dev/null 2>>"$work/said"; then
    kill -9 "$pid"; wait "$pid" 2>/dev/null || true
    echo "ab.sh: $1 ckpt failed: $(tail -1 "$work/said")" >&2
    return 1
  fi
  wait "$pid" 2>/dev/null || true
  new=$("$work/netio" time "$work/t2" "$1" rstrt -d "$work/img.crf") || { echo "ab.sh: $1 rstrt failed" >&2; return 1; }
  kill -9 "$new"
  rm -f "$work/img.crf"
  sleep 0.02
  echo "$(<"$work/t1") $(<"$work/t2")"
}

for i in $(seq "$RUNS"); do
  # (A command that fails ends the comparison: its target is killed, not waited for.)
  if [ $((i % 2)) = 0 ]; then a=$(one "$A") && b=$(one "$B"); else b=$(one "$B") && a=$(one "$A"); fi || exit 1
  echo "$a $b"
done > "$work/pairs"
grep -v "sees it die" "$work/said" >&2 || true
echo "machine: $(nproc) cpus, $(uname -r); $RUNS pairs; ms"
python3 - "$work/pairs" <<'PY'
import statistics as s, sys
rows = [[float(x) for x in l.split()] for l in open(sys.argv[1])]
for i, what in ((0, "dump"), (1, "restore")):
    a = [r[i] for r in rows]; b = [r[i + 2] for r in rows]
    d = sorted(y - x for x, y in zip(a, b))
    print(f"{what:8} A {s.median(a):6.2f}  B {s.median(b):6.2f}  B-A median {s.median(d):+6.2f}"
          f"  (quartiles {d[len(d) // 4]:+.2f} {d[3 * len(d) // 4]:+.2f})")
PY
