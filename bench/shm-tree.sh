#!/bin/bash
# A tree that shares memory since a fork, moved live: a python parent with MIB MiB of
# MAP_SHARED anonymous memory it wrote, and KIDS children forked after, which read all of it
# (as a pre-forked server's workers read their shared zones), moved with `migrate --live -v`
# between two network namespaces, to a restartd in a pid namespace of its own (the tree's
# pids free there). For each run: migrate's frozen ms and the image bytes (what was not sent
# ahead), and whether the moved parent found every page of its memory right.
# usage: bench/shm-tree.sh [CRS_BINARY]   (env KIDS=5, MIB=100, RUNS=3). Needs root, python3.
set -euo pipefail
cd "$(dirname "$0")"
CRS=$(realpath "${1:-../target/x86_64-unknown-linux-gnu/release/crs}")
KIDS=${KIDS:-5}
MIB=${MIB:-100}
RUNS=${RUNS:-3}
. ./lib.sh
two_nodes 94 shmt
# The restartd two_nodes started, replaced by one in a pid namespace of its own.
pkill -f "restartd -b 10.94.0.2" || true
sleep 0.2
ip netns exec "$B" unshare --pid --fork --mount-proc "$CRS" restartd -b 10.94.0.2 -p 1023 --key "$work/key" --allow-root 2>"$work/rd.log" &
disown
until grep -q listening "$work/rd.log"; do sleep 0.05; done
cat > "$work/tree.py" <<'PY'
import mmap, os, sys, time, signal
kids, mib, log = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
M = mib << 20
m = mmap.mmap(-1, M, flags=mmap.MAP_SHARED)
for i in range(0, M, 4096):
    m[i:i + 8] = (i // 4096).to_bytes(8, 'little')
for k in range(kids):
    if os.fork() == 0:
        sum(m[i] for i in range(0, M, 4096))
        while True:
            time.sleep(1)
def check(*a):
    bad = sum(1 for i in range(0, M, 4096) if int.from_bytes(m[i:i + 8], 'little') != i // 4096)
    open(log, 'a').write("check %d bad %d\n" % (os.getpid(), bad))
signal.signal(signal.SIGUSR1, check)
time.sleep(1)
open(log, 'a').write("ready %d\n" % os.getpid())
while True:
    time.sleep(0.2)
PY
echo "machine: $(nproc) cpus, $(uname -r); python parent with $MIB MiB shared, $KIDS children; migrate --live"
printf '%-4s %10s %12s %s\n' run frozen_ms image_bytes pages_right
for r in $(seq "$RUNS"); do
  log=$work/log.$r
  (bare ip netns exec "$A" setsid python3 "$work/tree.py" "$KIDS" "$MIB" "$log" </dev/null >/dev/null 2>&1 &)
  until grep -q ready "$log" 2>/dev/null; do sleep 0.1; done
  pid=$(awk '/ready/ {print $2}' "$log")
  out=$(ip netns exec "$A" "$CRS" migrate -v --live --key "$work/key" "$pid" 10.94.0.2 2>&1)
  line=$(echo "$out" | grep -E '^migrate: frozen [0-9.]+ ms, [0-9]+ bytes') || {
    echo "run $r: migrate did not say how long it froze the tree; it said:" >&2
    echo "$out" | tail -5 >&2
    exit 1
  }
  # The moved parent (the source is gone): the one of its command line with KIDS children.
  moved=
  for p in $(pgrep -f "tree.py $KIDS $MIB $log"); do
    kids=$(cat /proc/"$p"/task/*/children 2>/dev/null | wc -w)
    [ "$kids" -eq "$KIDS" ] && moved=$p
  done
  before=$(grep -c check "$log" || true)
  [ -n "$moved" ] || { echo "run $r: the moved tree is not found" >&2; exit 1; }
  kill -USR1 "$moved"
  for _ in $(seq 100); do [ "$(grep -c check "$log" || true)" -gt "$before" ] && break; sleep 0.05; done
  right=$(grep check "$log" | tail -1 | awk '{print ($4 == 0) ? "yes" : "no (" $4 " bad)"}')
  echo "$line" | awk -v r="$r" -v ok="$right" '{gsub(/,/, ""); printf "%-4s %10s %12s %s\n", r, $3, $5, ok}'
  pkill -9 -f "tree.py $KIDS $MIB $log" || true
  sleep 0.3
done
