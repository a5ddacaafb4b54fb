#!/bin/bash
# How long ckpt keeps a process frozen, and how long a checkpoint and a restore take, against
# its number of threads (1, 17, 65, 257: the target's main thread plus 0/16/64/256 workers, a
# third of them spinning, a third in futex waits, a third sleeping), beside the limit issue 10
# sets: a 64-thread process frozen at most a few milliseconds longer than a single-threaded one
# (taken here as +5 ms).
# usage: bench/threads-freeze.sh [CRS_BINARY]   (env RUNS=9, WORKERS="0 16 64 256"; CRIU=path
# to a criu binary to measure it beside). Root.
# Prints one row per thread count; each cell is min / median / max in ms over RUNS runs, crs
# beside CRIU (CRIU's cells only with CRIU set):
#   frozen  crs: `ckpt -v -o /dev/null`'s "frozen" figure (the process runs on between runs);
#           criu: `criu dump --leave-running`'s freezing + frozen time from its stats-dump (from
#           its first stop of the process to its resume, the span crs's figure covers).
#   ckpt    wall clock of the whole command: crs `ckpt -o FILE`, criu `dump --leave-running
#           --shell-job -D DIR` (the same dumps as its frozen cell), FILE and DIR on /dev/shm.
#   rstrt   wall clock of the whole command: crs `rstrt --pidns -d --inherit-stdio` of the image
#           the ckpt just wrote (a copy in a pid namespace of its own, beside the original, which
#           is stopped meanwhile so that its spinning threads leave the CPUs to the restore; the
#           copy is killed after each run); criu `restore -d --shell-job` of one dump taken with
#           the original killed at the end, restored RUNS times (each copy killed and reaped
#           before the next: it needs the original's pid). Both copies get as stdin a FIFO the
#           script holds open, so they block as the original does instead of reading EOF.
set -euo pipefail
cd "$(dirname "$0")"
CRS=$(realpath "${1:-../target/x86_64-unknown-linux-gnu/release/crs}")
RUNS=${RUNS:-9}
WORKERS=${WORKERS:-"0 16 64 256"}
work=$(mktemp -d /tmp/crs-threads.XXXXXX)
shm=$(mktemp -d /dev/shm/crs-threads.XXXXXX)
# The targets, crs's and CRIU's copies of them (same command line), crs's namespace inits.
trap 'pkill -9 -f "$work/threads" 2>/dev/null || true; pkill -9 -f "rstrt .*$shm/" 2>/dev/null || true
      rm -rf "$work" "$shm"' EXIT
cc -O2 -pthread -o "$work/threads" ../tests/targets/threads.c
mkfifo "$work/stdin"
exec {hold}<>"$work/stdin" # a reader and writer: the copies' stdin never sees EOF

. ./lib.sh

cell="%-20s"
if [ -n "${CRIU:-}" ]; then
  printf "%-8s| %-42s | %-42s | %s\n" "" "frozen ms" "ckpt wall ms" "rstrt wall ms"
  printf "%-8s| $cell  $cell | $cell  $cell | $cell  %s\n" threads \
    "crs (min med max)" "criu (min med max)" "crs (min med max)" "criu (min med max)" "crs (min med max)" "criu (min med max)"
else
  printf "%-8s| $cell | $cell | %s\n" "" "frozen ms" "ckpt wall ms" "rstrt wall ms"
  printf "%-8s| $cell | $cell | %s\n" threads "crs (min med max)" "crs (min med max)" "crs (min med max)"
fi
base=""
for n in $WORKERS; do
  rm -f "$work/out" "$work"/*.ms
  # The target waits for a line on stdin; it gets one only at the end. (A go file per target,
  # never removed: a loop that sleeps through its touch still sees it; and none outlives $work.)
  k=$((${k:-0} + 1)) go=$work/go.$k
  (while [ ! -e "$go" ] && [ -d "$work" ]; do sleep 0.1; done; echo done) | (bare "$work/threads" "$n") >"$work/out" 2>&1 &
  tpid=$! # the target itself: its subshell execs it
  for _ in $(seq 200); do grep -q ready "$work/out" && break; sleep 0.05; done
  pid=$(sed -n 's/^ready //p' "$work/out")
  [ "$pid" = "$tpid" ] || { echo "target did not start: $(cat "$work/out")" >&2; exit 1; }

  for _ in $(seq "$RUNS"); do
    out=$("$CRS" ckpt -v -o /dev/null "$pid" 2>&1) || { echo "ckpt failed: $out" >&2; exit 1; }
    echo "$out" | sed -n 's/.*frozen \([0-9.]*\) ms/\1/p' >>"$work/frozen.ms"
  done
  for _ in $(seq "$RUNS"); do
    img=$shm/crs.crf
    t0=${EPOCHREALTIME//[!0-9]/}
    "$CRS" ckpt -o "$img" "$pid" || { echo "ckpt -o $img failed" >&2; exit 1; }
    t1=${EPOCHREALTIME//[!0-9]/}
    ms "$t0" "$t1" >>"$work/ckpt.ms"
    kill -STOP "$pid"
    t0=${EPOCHREALTIME//[!0-9]/}
    new=$("$CRS" rstrt --pidns -d --inherit-stdio "$img" <&$hold {hold}>&- 2>"$work/rstrt.err") ||
      { kill -CONT "$pid"; echo "rstrt failed: $(cat "$work/rstrt.err")" >&2; exit 1; }
    t1=${EPOCHREALTIME//[!0-9]/}
    ms "$t0" "$t1" >>"$work/rstrt.ms"
    kill -9 "$new" || { echo "the copy (pid $new) was not running after rstrt -d" >&2; exit 1; }
    settle "$work/threads" "$pid" # no copy left, only the original
    settle "rstrt .*$shm/"        # nor the namespace's init
    kill -CONT "$pid"
    rm -f "$img"
  done
  line=$(stats <"$work/frozen.ms")
  ckpt=$(stats <"$work/ckpt.ms")
  rstrt=$(stats <"$work/rstrt.ms")
  median=$(echo "$line" | awk '{print $2}')
  [ -n "$base" ] || base=$median

  if [ -n "${CRIU:-}" ]; then
    criu_dumps "$pid"
    # Restore: one dump that kills the original (its pid must be free), restored RUNS times.
    # Its stdin pipe's other end (the shell loop) is not in the dump: --inherit-fd gives the
    # copy the held FIFO in its place (else CRIU makes a pipe with no writer: EOF, it exits).
    stdin=$(readlink "/proc/$pid/fd/0")
    d=$(mktemp -d "$shm/criu.XXXXXX")
    "$CRIU" dump -t "$pid" -D "$d" --shell-job -o dump.log >/dev/null 2>&1 ||
      { echo "criu dump failed: $(tail -3 "$d/dump.log")" >&2; exit 1; }
    touch "$go"                      # ends its stdin's loop: `wait` waits for the whole job
    wait "$tpid" 2>/dev/null || true # reap it: its pid is free then
    for _ in $(seq "$RUNS"); do
      gone "$pid"
      t0=${EPOCHREALTIME//[!0-9]/}
      "$CRIU" restore -d -D "$d" --shell-job --inherit-fd "fd[$hold]:$stdin" -o restore.log >/dev/null 2>&1 ||
        { echo "criu restore failed: $(grep -m3 Error "$d/restore.log")" >&2; exit 1; }
      t1=${EPOCHREALTIME//[!0-9]/}
      ms "$t0" "$t1" >>"$work/crstrt.ms"
      [ -e "/proc/$pid" ] || { echo "criu's copy is not running" >&2; exit 1; }
      kill -9 "$pid"
    done
    gone "$pid"
    settle "$work/threads"
    rm -rf "$d"
    printf "%-8s| $cell  $cell | $cell  $cell | $cell  %s\n" $((n + 1)) "$line" "$(stats <"$work/cfrozen.ms")" \
      "$ckpt" "$(stats <"$work/cckpt.ms")" "$rstrt" "$(stats <"$work/crstrt.ms")"
  else
    printf "%-8s| $cell | $cell | %s\n" $((n + 1)) "$line" "$ckpt" "$rstrt"
  fi
  touch "$go"
  wait 2>/dev/null || true
done
awk -v b="$base" 'BEGIN {printf "limit: 65 threads frozen at most %.1f ms (1 thread'"'"'s median + 5)\n", b + 5}'
