#!/bin/bash
# Leave-running checkpoints (ckpt PID: the process runs on) of real runtimes, whose mapped
# files are large (Node.js maps some 100 MB of its binary and ICU data, the JVM its modules
# file, PHP its extensions): a Go program, CPython, Node.js and a JVM (bench/runtimes/, each
# writing a line per tick with the gap since the last one). The image is self-contained (the
# default: it stores the unmodified pages of those files too). With two binaries, they take
# turns on the same process (A B, then B A). Per program and binary, min / median / max over
# RUNS checkpoints of:
#   frozen_ms  ckpt -v's "frozen"
#   gap_ms     the program's own longest gap between two ticks while ckpt ran: what its
#              users see
#   total_ms   the checkpoint's wall time (image written to WORKDIR, synced, renamed)
# usage: bench/runtimes-ckpt.sh CRS_A [CRS_B]   (env PROGS="go py node java", RUNS=5,
#        WORKDIR=/dev/shm). Needs go, python3, node, javac.
set -euo pipefail
cd "$(dirname "$0")"
BINS=()
for b in "$@"; do BINS+=("$(realpath "$b")"); done
[ ${#BINS[@]} -ge 1 ] || { echo "usage: bench/runtimes-ckpt.sh CRS_A [CRS_B]" >&2; exit 2; }
PROGS=${PROGS:-"go py node java"}
RUNS=${RUNS:-5}
. ./lib.sh
work=$(mktemp -d "${WORKDIR:-/dev/shm}/crs-rtckpt.XXXXXX")
trap 'kill -9 $(cat "$work"/pid 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
here=$(pwd)/runtimes
GOCACHE=$work/gocache GO111MODULE=off go build -o "$work/churn" "$here/churn.go"
javac -d "$work" "$here/Tick.java"
echo "machine: $(nproc) cpus, $(uname -r); $RUNS leave-running checkpoints per binary; min / median / max ms"
printf '%-5s %-3s %20s %20s %20s %12s\n' prog bin frozen_ms gap_ms total_ms image_MB
for prog in $PROGS; do
  log=$work/$prog.log
  case $prog in
    go) cmd=("$work/churn" "$log") ;;
    py) cmd=(/usr/bin/python3 "$here/threads.py" "$log") ;;
    node) cmd=(node "$here/objects.js" "$log") ;;
    java) cmd=(java -Xmx512m -cp "$work" Tick "$log") ;;
  esac
  (bare setsid "${cmd[@]}" </dev/null >/dev/null 2>&1 & echo $! > "$work/pid")
  until [ -s "$log" ] && [ "$(wc -l < "$log")" -ge 100 ]; do sleep 0.1; done
  pid=$(cat "$work/pid")
  for i in $(seq 0 $((${#BINS[@]} - 1))); do : > "$work/r$i"; done
  for run in $(seq "$RUNS"); do
    order=$(seq 0 $((${#BINS[@]} - 1)))
    [ $((run % 2)) = 0 ] && order=$(echo "$order" | tac)
    for i in $order; do
      n=$(wc -l < "$log")
      t0=${EPOCHREALTIME//[!0-9]/}
      out=$("${BINS[$i]}" ckpt -v -o "$work/img.crf" "$pid" 2>&1) || { echo "ckpt failed: $out" >&2; exit 1; }
      t1=${EPOCHREALTIME//[!0-9]/}
      sleep 0.3
      frozen=$(echo "$out" | grep -oE "frozen [0-9.]+ ms" | tail -1 | grep -oE "[0-9.]+")
      gap=$(tail -n +$((n + 1)) "$log" | awk '{print $4}' | sort -n | tail -1)
      echo "$frozen $gap $(ms "$t0" "$t1") $(stat -c %s "$work/img.crf")" >> "$work/r$i"
      rm -f "$work/img.crf"
    done
  done
  for i in $(seq 0 $((${#BINS[@]} - 1))); do
    col() { awk -v c="$1" '{print $c}' "$work/r$i" | stats 6; }
    printf '%-5s %-3s %20s %20s %20s %12s\n' "$prog" "$(echo ABCD | cut -c$((i + 1)))" "$(col 1)" "$(col 2)" "$(col 3)" \
      "$(awk '{s += $4} END {printf "%.0f", s / NR / 1e6}' "$work/r$i")"
  done
  kill -9 "$pid" 2>/dev/null || true
  wait 2>/dev/null || true
done
