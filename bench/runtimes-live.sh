#!/bin/bash
# Real runtimes moved live between two network namespaces: a Go program (goroutines
# allocating for the collector, a ticker writing 256 MiB), CPython (4 threads writing a
# 200 MiB bytearray), Node.js (2 million objects updated every 10 ms) and a JVM (OpenJDK,
# G1, a map churned), each writing a line per tick with the gap since the last one
# (bench/runtimes/). For each program and mode: migrate -v's frozen ms, and the program's own
# longest gap between two ticks before and after the move, in ms; "dead" if the moved
# program stopped ticking.
# usage: bench/runtimes-live.sh [CRS_BINARY]   (env PROGS="go py node java",
#        MODES="live post both", PY=/usr/bin/python3: the distribution's, which restartd
#        finds the same at the destination; see live-tree.sh; OWN=1: node run from a copy
#        of its 99 MB binary in the work directory, which only root may look into, so that
#        restartd, which looks at files as nobody, does not hold it: a destination without
#        the program. Go's binary is built there always). Needs root, iproute2, go,
#        python3, node, javac.
set -euo pipefail
cd "$(dirname "$0")"
CRS=$(realpath "${1:-../target/x86_64-unknown-linux-gnu/release/crs}")
PROGS=${PROGS:-"go py node java"}
MODES=${MODES:-"live post both"}
. ./lib.sh
two_nodes 85 rtl
here=$(pwd)/runtimes
GOCACHE=$work/gocache GO111MODULE=off go build -o "$work/churn" "$here/churn.go"
javac -d "$work" "$here/Tick.java"
NODE=node
if [ -n "${OWN:-}" ]; then
  cp "$(command -v node)" "$work/node"
  NODE=$work/node
fi
echo "machine: $(nproc) cpus, $(uname -r); frozen ms (migrate -v), then the program's longest gap in ms before / after"
printf '%-5s %-5s %9s %9s %9s\n' prog mode frozen gap_before gap_after
for prog in $PROGS; do
  for mode in $MODES; do
    case $mode in live) flags=(--live) ;; post) flags=(--post-copy) ;; both) flags=(--live --post-copy) ;; esac
    log=$work/$prog-$mode.log
    case $prog in
      go) cmd=("$work/churn" "$log") ;;
      py) cmd=("${PY:-/usr/bin/python3}" "$here/threads.py" "$log") ;;
      node) cmd=("$NODE" "$here/objects.js" "$log") ;;
      java) cmd=(java -Xmx512m -cp "$work" Tick "$log") ;;
    esac
    (bare ip netns exec "$A" setsid "${cmd[@]}" </dev/null >/dev/null 2>&1 & echo $! > "$work/pid")
    until [ -s "$log" ] && [ "$(wc -l < "$log")" -ge 100 ]; do sleep 0.1; done
    pid=$(cat "$work/pid")
    before=$(awk '{print $4}' "$log" | sort -n | tail -1)
    n=$(wc -l < "$log")
    out=$(ip netns exec "$A" "$CRS" migrate -v --key "$work/key" "${flags[@]}" "$pid" 10.85.0.2 2>&1)
    new=$(echo "$out" | awk '/runs there/ {print $NF}')
    frozen=$(echo "$out" | grep -oE "(after|frozen) [0-9.]+ ms frozen|frozen [0-9.]+ ms" | head -1 | grep -oE "[0-9.]+")
    sleep 2
    after=$(tail -n +$((n + 1)) "$log" | awk '{print $4}' | sort -n | tail -1)
    [ -n "$new" ] && [ -e "/proc/$new" ] || after=dead
    printf '%-5s %-5s %9s %9s %9s\n' "$prog" "$mode" "${frozen:-?}" "$before" "${after:-dead}"
    [ -n "$new" ] && kill -9 "$new" 2>/dev/null || true
    kill -9 "$pid" 2>/dev/null || true
  done
done
