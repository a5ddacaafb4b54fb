#!/bin/bash
# Live migration of process trees whose processes share memory since a fork, between two
# network namespaces (keyed veth; restartd in a pid namespace of its own, so that the tree
# keeps its pids): a writer and its child sharing MIB MiB (tests/targets/writer.c "cow",
# each rewriting 1 MB/s of it), and a Python multiprocessing pool, three workers forked
# from a parent holding a 200 MiB bytearray (tests/targets/shared_pool.py). Per case, median of
# RUNS runs of:
#   sent_MB   bytes sent ahead by the rounds, and their share of the tree's own memory
#             (its Pss at the source: each page counted once, the limit a move can reach)
#   total_ms  migrate's wall time
#   frozen_ms migrate -v: from the freeze to the destination's Running
#   pss_src / pss_dst  the tree's Pss in MiB before at the source, after at the destination
# With OLD=BINARY, the same cases with that binary too (restartd of the same binary), in turns.
# The pool runs the distribution's Python (env PY=/usr/bin/python3): restartd takes a file as
# the same at the destination only if anyone may read it, and one under a home directory of
# mode 700 (pyenv's) is sent whole in the frozen image.
# usage: bench/live-tree.sh [CRS_BINARY]   (env MIB=512, RUNS=3, CASES="writer pool",
# OLD=, PY=). Root, iproute2, python3, cc.
set -euo pipefail
cd "$(dirname "$0")"
CRS=$(realpath "${1:-../target/x86_64-unknown-linux-gnu/release/crs}")
MIB=${MIB:-512}
RUNS=${RUNS:-3}
CASES=${CASES:-"writer pool"}
PY=${PY:-/usr/bin/python3}
. ./lib.sh
two_nodes 88 tree
cc -O2 -o "$work/writer" ../tests/targets/writer.c
here=$(pwd)

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
pss() { for p in "$@"; do awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup"; done | awk '{s+=$1} END {print int(s/1024)}'; }
tree() { echo "$1" $(cat /proc/"$1"/task/*/children); }
# restartd of binary $1 in a pid namespace of its own on port 1024 of node B.
restartd_of() {
  # (unshare ignores SIGTERM while it waits: its child, the namespace's init, goes.)
  [ -n "${rpid:-}" ] && { pkill -9 -P "$rpid" || true; while kill -0 "$rpid" 2>/dev/null; do sleep 0.01; done; }
  ip netns exec "$B" unshare --pid --fork --mount-proc "$1" restartd -b 10.88.0.2 -p 1024 --key "$work/key" --allow-root 2>"$work/r.log" &
  rpid=$!
  disown
  until grep -q listening "$work/r.log"; do sleep 0.01; done
}
echo "machine: $(nproc) cpus, $(uname -r); writer: $MIB MiB shared by 2 processes; pool: 200 MiB shared by 4; median of $RUNS runs"
printf '%-7s %-4s %9s %8s %9s %9s %8s %8s\n' case bin sent_MB sent/pss total_ms frozen_ms pss_src pss_dst
bins="new"; [ -n "${OLD:-}" ] && bins="old new"
for c in $CASES; do
  for b in $bins; do
    bin=$CRS; [ "$b" = old ] && bin=$(realpath "$OLD")
    restartd_of "$bin"
    : > "$work/res"
    for _ in $(seq "$RUNS"); do
      log=$work/log; : > "$log"
      case $c in
        writer) (bare ip netns exec "$A" setsid "$work/writer" "$log" "$MIB" 1 cow </dev/null >/dev/null 2>&1 &)
                until grep -q forked "$log" 2>/dev/null; do sleep 0.05; done ;;
        pool) (bare ip netns exec "$A" setsid "$PY" "$here/../tests/targets/shared_pool.py" "$log" </dev/null >/dev/null 2>&1 &)
              until grep -q ready "$log" 2>/dev/null; do sleep 0.05; done ;;
      esac
      sleep 1
      pid=$(awk '/ready/ {print $2; exit}' "$log")
      src=$(pss $(tree "$pid"))
      t0=$(date +%s%N)
      out=$(ip netns exec "$A" "$bin" migrate -v --key "$work/key" --live "$pid" 10.88.0.2:1024 2>&1) || { echo "migrate failed: $out" >&2; exit 1; }
      t1=$(date +%s%N)
      sleep 0.5
      # The restored root: the process of node B's pid namespace whose pid there is $pid.
      new=$(for p in $(ip netns pids "$B"); do
              if awk -v want="$pid" '/^NSpid:/ {exit !($3 == want)}' "/proc/$p/status" 2>/dev/null; then echo "$p"; fi
            done | head -1)
      [ -n "$new" ] || { echo "no restored process: $out" >&2; exit 1; }
      dst=$(pss $(tree "$new"))
      sent=$(echo "$out" | awk '/sent ahead in/ {s += $4} END {print s + 0}')
      frozen=$(echo "$out" | grep -oE 'frozen [0-9.]+ ms' | head -1 | grep -oE '[0-9.]+')
      echo "$sent $(( (t1 - t0) / 1000000 )) $frozen $src $dst" >> "$work/res"
      for p in $(tree "$new"); do kill -9 "$p" 2>/dev/null || true; done
      sleep 0.3
    done
    col() { awk -v c="$1" '{print $c}' "$work/res" | median; }
    s=$(col 1); src=$(col 4)
    printf '%-7s %-4s %9d %8.2f %9d %9s %8s %8s\n' "$c" "$b" $((s / 1000000)) "$(awk -v s="$s" -v p="$src" 'BEGIN {print s / (p * 1048576)}')" "$(col 2)" "$(col 3)" "$src" "$(col 5)"
  done
done
