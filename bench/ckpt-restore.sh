#!/bin/bash
# Checkpoint and restore times of crs (and of CRIU beside it, when CRIU is given), in one run,
# for processes with SIZES MiB of dirty anonymous memory. Images go to /dev/shm.
# usage: bench/ckpt-restore.sh [CRS_BINARY] [CRIU_BINARY]   (env SIZES="64 1024", RUNS=5)
# Prints median times (ms), image sizes and the ratio crs/CRIU per figure. Needs root.
set -euo pipefail
cd "$(dirname "$0")"
CRS=${1:-../target/x86_64-unknown-linux-gnu/release/crs}
CRIU=${2:-}
SIZES=${SIZES:-"64 1024"}
RUNS=${RUNS:-5}
work=$(mktemp -d /dev/shm/crs-bench.XXXXXX)
trap 'pkill -9 -f "$work/dirty" 2>/dev/null || true; rm -rf "$work"' EXIT
cc -O2 -o "$work/dirty" dirty.c
cc -O2 -o "$work/netio" netio.c

now() { date +%s%N; }
ms() { echo $(( ($2 - $1) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

start_target() { # $1 = MiB; sets TPID once all memory is dirty (no subshell: we reap it)
  # This VM hands memory freed a few seconds ago back to its host, and touching it again costs
  # several times more than touching memory freed just now: touch and free enough for the
  # process, its image on /dev/shm and the restored copy, so every run meets warm memory.
  "$work/netio" fill $(( (3 * $1 + 64) << 20 )) >/dev/null
  setsid "$work/dirty" "$1" </dev/null >/dev/null 2>&1 &
  local pid=$!
  TPID=$pid
  local want=$(( $1 * 1024 ))
  while :; do
    local rss; rss=$(awk '/^Rss:/ {s+=$2} END {print s+0}' "/proc/$pid/smaps_rollup" 2>/dev/null || echo 0)
    [ "$rss" -ge "$want" ] && break
    sleep 0.01
  done
}

run_crs() { # $1 = MiB -> "dump_ms restore_ms image_bytes"
  local pid t0 t1 t2 img="$work/crs.crf" new
  start_target "$1"; pid=$TPID
  t0=$(now); "$CRS" ckpt -k -o "$img" "$pid"; t1=$(now)
  wait "$pid" 2>/dev/null || true
  new=$("$CRS" rstrt -d "$img"); t2=$(now)
  kill -9 "$new"; sleep 0.05
  echo "$(ms "$t0" "$t1") $(ms "$t1" "$t2") $(stat -c %s "$img")"
  rm -f "$img"
}

run_criu() {
  local pid t0 t1 t2 dir="$work/criu"
  rm -rf "$dir"; mkdir -p "$dir"
  start_target "$1"; pid=$TPID
  t0=$(now); "$CRIU" dump -t "$pid" -D "$dir" -o dump.log >/dev/null 2>&1; t1=$(now)
  wait "$pid" 2>/dev/null || true
  "$CRIU" restore -d -D "$dir" -o restore.log >/dev/null 2>&1; t2=$(now)
  kill -9 "$pid" 2>/dev/null || true; sleep 0.05
  echo "$(ms "$t0" "$t1") $(ms "$t1" "$t2") $(du -sb "$dir" | cut -f1)"
}

echo "machine: $(nproc) cpus, $(awk '/MemTotal/ {print int($2/1024)" MiB"}' /proc/meminfo), $(uname -r); images on /dev/shm; median of $RUNS runs"
printf '%-6s %-5s %10s %10s %14s\n' MiB tool dump_ms restore_ms image_bytes
for size in $SIZES; do
  for tool in crs ${CRIU:+criu}; do
    : > "$work/r"
    for _ in $(seq "$RUNS"); do "run_$tool" "$size" >> "$work/r"; done
    [ -n "${VERBOSE:-}" ] && sed "s/^/  $tool run: /" "$work/r"
    d=$(cut -d' ' -f1 "$work/r" | median); r=$(cut -d' ' -f2 "$work/r" | median); b=$(cut -d' ' -f3 "$work/r" | median)
    printf '%-6s %-5s %10s %10s %14s\n' "$size" "$tool" "$d" "$r" "$b"
    echo "$size $tool $d $r $b" >> "$work/all"
  done
  if [ -n "$CRIU" ]; then
    awk -v s="$size" '$1==s && $2=="crs" {cd=$3; cr=$4} $1==s && $2=="criu" {kd=$3; kr=$4}
      END {if (kd>0 && kr>0) printf "%-6s ratio crs/criu: dump %.2f, restore %.2f\n", s, cd/kd, cr/kr}' "$work/all"
  fi
done
