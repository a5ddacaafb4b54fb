#!/bin/bash
# A checkpoint of a process that runs on (ckpt PID: its memory copied while it runs, then
# frozen for what it wrote since) beside the same checkpoint frozen throughout (ckpt
# --frozen) and, given CRIU, criu dump --leave-running (which cannot pre-dump here: this kernel
# has no soft-dirty tracking). The process has MIB of memory and keeps rewriting it at RATE
# MB/s (tests/targets/writer.c); with TREE=1 it has a child with MIB of its own, written
# the same way (the gap is the parent's; image/mem counts both); with TREE=cow a child that
# shares the MIB since the fork until it writes them, as a worker pool's (image/mem counts
# them once: stored once, the image is about the size of one process's memory). Sinks: "file", an image file in WORKDIR (synced, renamed);
# "pipe", the image through a pipe to gzip -1 (a slow reader, as a compressor or a network
# is). Per case, min / median / max of RUNS runs of:
#   gap_ms     the longest gap between two turns of the process's own loop (CLOCK_MONOTONIC,
#              measured by the process): what its users see. The target: about --max-frozen
#              (50 ms) whatever the size and the sink.
#   frozen_ms  ckpt -v's "frozen" (CRIU: its stats-dump freezing + frozen time)
#   total_ms   the checkpoint's wall time
#   image/mem  the image's bytes over the process's memory
#   rstrt_ms   (file) restoring the image, detached, until the process runs (CRIU: criu
#              restore -d), after the original is killed; the restored process then checks
#              every page of its memory
# usage: bench/ckpt-running.sh [CRS_BINARY] [CRIU_BINARY]   (env MIB=1024, RATE=10, RUNS=5,
# SINKS="file pipe", WORKDIR=/var/tmp, TREE=). Root for CRIU.
set -euo pipefail
cd "$(dirname "$0")"
CRS=$(realpath "${1:-../target/x86_64-unknown-linux-gnu/release/crs}")
CRIU=${2:-}
MIB=${MIB:-1024}
RATE=${RATE:-10}
RUNS=${RUNS:-5}
SINKS=${SINKS:-"file pipe"}
TREE=${TREE:-}
case "$TREE" in
  "") kind=plain procs=1 ;;
  cow) kind=cow procs=1 ;;
  *) kind=fork procs=2 ;;
esac
. ./lib.sh
work=$(mktemp -d "${WORKDIR:-/var/tmp}/ckpt-running.XXXXXX")
trap 'pkill -9 -f "$work/writer" 2>/dev/null || true; rm -rf "$work"' EXIT
cc -O2 -o "$work/writer" ../tests/targets/writer.c

# Asks the writer (pid $1) to check itself; prints its verdict line.
check() {
  local n; n=$(wc -l < "$work/log")
  kill -USR1 "$1"
  until [ "$(wc -l < "$work/log")" -gt "$n" ]; do sleep 0.01; done
  tail -1 "$work/log"
}
echo "machine: $(nproc) cpus, $(awk '/MemTotal/ {print int($2/1024)" MiB"}' /proc/meminfo), $(uname -r); images in $(df --output=source,fstype "$work" | tail -1)"
echo "process: $MIB MiB, rewriting $RATE MB/s$([ -n "$TREE" ] && echo ", and a child the same ($kind)"); min / median / max of $RUNS runs"
printf '%-5s %-8s %20s %20s %20s %9s %20s\n' sink mode gap_ms frozen_ms total_ms image/mem rstrt_ms
for sink in $SINKS; do
  modes="running frozen"
  [ -n "$CRIU" ] && [ "$sink" = file ] && modes="$modes criu"
  for mode in $modes; do
    : > "$work/r"
    for _ in $(seq "$RUNS"); do
      : > "$work/log"
      (bare setsid "$work/writer" "$work/log" "$MIB" "$RATE" "$kind" </dev/null >/dev/null 2>&1 &)
      until grep -q ready "$work/log" 2>/dev/null; do sleep 0.05; done
      pid=$(awk '/ready/ {print $2}' "$work/log")
      sleep 1
      check "$pid" > /dev/null # the gap counts from here
      rm -rf "$work/img" "$work/criu"
      t0=${EPOCHREALTIME//[!0-9]/}
      case $mode-$sink in
        running-file) out=$("$CRS" ckpt -v -o "$work/img" "$pid" 2>&1) ;;
        frozen-file) out=$("$CRS" ckpt -v --frozen -o "$work/img" "$pid" 2>&1) ;;
        running-pipe) out=$( { "$CRS" ckpt -v -o - "$pid" | gzip -1 | wc -c > "$work/img"; } 2>&1) ;;
        frozen-pipe) out=$( { "$CRS" ckpt -v --frozen -o - "$pid" | gzip -1 | wc -c > "$work/img"; } 2>&1) ;;
        criu-file)
          mkdir "$work/criu"
          "$CRIU" dump -t "$pid" -D "$work/criu" --leave-running -o dump.log >/dev/null 2>&1 ||
            { echo "criu dump failed: $(tail -3 "$work/criu/dump.log")" >&2; exit 1; }
          out="frozen $(criu_frozen "$work/criu") ms" ;;
      esac
      t1=${EPOCHREALTIME//[!0-9]/}
      sleep 0.2
      v=$(check "$pid")
      case "$v" in ok*) ;; *) echo "after the checkpoint: $v" >&2; exit 1;; esac
      # (Each gone, reaped: a zombie still holds its pid, which the restore wants.)
      kids=$(cat /proc/"$pid"/task/*/children 2>/dev/null || true)
      kill -9 "$pid" $kids
      for p in $pid $kids; do while [ -e "/proc/$p" ]; do sleep 0.01; done; done
      back=0
      if [ "$sink" = file ]; then
        r0=${EPOCHREALTIME//[!0-9]/}
        if [ "$mode" = criu ]; then
          "$CRIU" restore -D "$work/criu" -d -o restore.log >/dev/null 2>&1 ||
            { echo "criu restore failed: $(tail -3 "$work/criu/restore.log")" >&2; exit 1; }
          new=$pid
        else
          new=$(bare "$CRS" rstrt -d "$work/img")
        fi
        r1=${EPOCHREALTIME//[!0-9]/}
        back=$(( (r1 - r0) / 1000 ))
        w=$(check "$new")
        case "$w" in ok*) ;; *) echo "restored: $w" >&2; exit 1;; esac
        kids=$(cat /proc/"$new"/task/*/children 2>/dev/null || true)
        kill -9 "$new" $kids
        for p in $new $kids; do while [ -e "/proc/$p" ]; do sleep 0.01; done; done
      fi
      gap=$(echo "$v" | sed -E 's/.*gap_us=([0-9]+).*/\1/')
      frozen=$(echo "$out" | sed -nE 's/.*frozen ([0-9.]+) ms.*/\1/p' | tail -1)
      [ -n "$frozen" ] || { echo "no frozen time: $out" >&2; exit 1; }
      case $mode-$sink in
        *-pipe) bytes=$(echo "$out" | sed -nE 's/.*image ([0-9]+) bytes.*/\1/p') ;;
        criu-file) bytes=$(du -sb "$work/criu" | cut -f1) ;;
        *) bytes=$(stat -c %s "$work/img") ;;
      esac
      echo "$gap $frozen $(( (t1 - t0) / 1000 )) $bytes $back" >> "$work/r"
      [ -n "${VERBOSE:-}" ] && echo "  $mode $sink: gap $gap us; $(echo "$out" | tr '\n' ' ')" >&2
    done
    printf '%-5s %-8s %20s %20s %20s %9s %20s\n' "$sink" "$mode" \
      "$(awk '{print $1/1000}' "$work/r" | stats)" "$(awk '{print $2}' "$work/r" | stats)" \
      "$(awk '{print $3}' "$work/r" | stats)" \
      "$(awk -v m="$((MIB * procs))" '{print $4/(m*1048576)}' "$work/r" | sort -n | awk '{a[NR]=$1} END {printf "%.2f", a[int((NR+1)/2)]}')" \
      "$(awk '{print $5}' "$work/r" | stats)"
  done
done
