#!/bin/bash
# Checkpoint and restore times of crs (and of CRIU beside it, when CRIU is given), in one run,
# each beside the limit the same run measures: for ckpt, writing as many bytes as the image to
# a new file in the same directory (netio write); for rstrt, the first-touch fill of as much
# fresh memory as the process had touched (netio fill). Images go to /dev/shm.
# Cases (env CASES, default "64 1024 4096 sparse sleep"): N, a process with N MiB of dirty
# anonymous memory; sparse, 2 GiB mapped of which 10 MiB touched; sleep, a small process
# (sleep(1)), whose target is 5 ms each way (issue 14) rather than a measured limit.
# usage: bench/ckpt-restore.sh [CRS_BINARY] [CRIU_BINARY]   (env CASES, RUNS=5, CKPT_ARGS: more
# ckpt options, e.g. "--no-libs --no-binary" for images without the libraries' pages, as CRIU's)
# Prints median times (ms), each limit and the ratio time/limit, image sizes, and the ratio
# crs/CRIU per figure. Needs root.
set -euo pipefail
cd "$(dirname "$0")"
CRS=${1:-../target/x86_64-unknown-linux-gnu/release/crs}
CRIU=${2:-}
CASES=${CASES:-${SIZES:-"64 1024 4096 sparse sleep"}}
RUNS=${RUNS:-5}
work=$(mktemp -d /dev/shm/crs-bench.XXXXXX)
trap 'pkill -9 -f "$work/dirty" 2>/dev/null || true; pkill -9 -f "sleep 1000[0-9]" 2>/dev/null || true; rm -rf "$work"' EXIT
cc -O2 -o "$work/dirty" dirty.c
cc -O2 -o "$work/netio" netio.c

. ./lib.sh # bare, now (us), ms
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

touched() { # the MiB a case's process touches
  case "$1" in sparse) echo 10 ;; sleep) echo 0 ;; *) echo "$1" ;; esac
}

start_target() { # $1 = case; sets TPID once all its memory is dirty (no subshell: we reap it)
  local args want
  case "$1" in
    sleep) bare setsid sleep 100007 </dev/null >/dev/null 2>&1 & TPID=$!; sleep 0.05; return ;;
    sparse) args="10 2048" ;;
    *) args="$1" ;;
  esac
  # This VM hands memory freed a few seconds ago back to its host, and touching it again costs
  # several times more than touching memory freed just now: touch and free enough for the
  # process, its image on /dev/shm and the restored copy, so every run meets warm memory.
  "$work/netio" fill $(( (3 * $(touched "$1") + 64) << 20 )) >/dev/null
  # shellcheck disable=SC2086
  setsid "$work/dirty" $args </dev/null >/dev/null 2>&1 &
  local pid=$!
  TPID=$pid
  want=$(( $(touched "$1") * 1024 ))
  while :; do
    local rss; rss=$(awk '/^Rss:/ {s+=$2} END {print s+0}' "/proc/$pid/smaps_rollup" 2>/dev/null || echo 0)
    [ "$rss" -ge "$want" ] && break
    sleep 0.01
  done
}

# Each command is timed by netio from spawn to exit: timed from bash, the fork of the shell
# would count too (a millisecond on a slow VM, more than the whole of some cases).
timed() { # FILE CMD ARGS.. -> runs CMD, its time (ms) in FILE
  local f=$1; shift
  "$work/netio" time "$f" "$@"
}

run_crs() { # $1 = case -> "dump_ms restore_ms image_bytes"
  local pid img="$work/crs.crf" new
  start_target "$1"; pid=$TPID
  # shellcheck disable=SC2086
  # (ckpt's note that the killed process's parent sees it die is kept out of the table.)
  timed "$work/t1" "$CRS" ckpt -k ${CKPT_ARGS:-} -o "$img" "$pid" 2> >(grep -v "sees it die" >&2)
  wait "$pid" 2>/dev/null || true
  new=$(timed "$work/t2" "$CRS" rstrt -d "$img")
  kill -9 "$new"; sleep 0.05
  echo "$(<"$work/t1") $(<"$work/t2") $(stat -c %s "$img")"
  rm -f "$img"
}

run_criu() { # as run_crs
  local pid dir="$work/criu"
  rm -rf "$dir"; mkdir -p "$dir"
  start_target "$1"; pid=$TPID
  timed "$work/t1" "$CRIU" dump -t "$pid" -D "$dir" -o dump.log >/dev/null 2>&1
  wait "$pid" 2>/dev/null || true
  timed "$work/t2" "$CRIU" restore -d -D "$dir" -o restore.log >/dev/null 2>&1
  kill -9 "$pid" 2>/dev/null || true; sleep 0.05
  echo "$(<"$work/t1") $(<"$work/t2") $(du -sb "$dir" | cut -f1)"
}

# The limits: writing BYTES to a new file beside the images, and filling MiB of fresh memory
# (medians of 3).
write_limit() { for _ in 1 2 3; do "$work/netio" write "$work/limit" "$1" | awk '{print $2 * 1000}'; done | median; }
fill_limit() { for _ in 1 2 3; do "$work/netio" fill $(( $1 << 20 )) | awk '{print $2 * 1000}'; done | median; }
ratio() { awk -v t="$1" -v l="$2" 'BEGIN {if (l > 0) printf "%.2f", t / l; else print "-"}'; }

echo "machine: $(nproc) cpus, $(awk '/MemTotal/ {print int($2/1024)" MiB"}' /proc/meminfo), $(uname -r); images on /dev/shm; median of $RUNS runs"
printf '%-7s %-5s %10s %9s %7s %10s %9s %7s %12s\n' case tool dump_ms write_ms /limit restore_ms fill_ms /limit image_bytes
for c in $CASES; do
  for tool in crs ${CRIU:+criu}; do
    : > "$work/r"
    for _ in $(seq "$RUNS"); do "run_$tool" "$c" >> "$work/r"; done
    [ -n "${VERBOSE:-}" ] && sed "s/^/  $tool run: /" "$work/r"
    d=$(cut -d' ' -f1 "$work/r" | median); r=$(cut -d' ' -f2 "$work/r" | median); b=$(cut -d' ' -f3 "$work/r" | median)
    if [ "$c" = sleep ]; then
      wl=5 fl=5 # the issue's target, not a limit measured
      echo "sleep ($tool): writing its $b bytes alone to a new file here takes $(write_limit "$b") ms"
    else
      wl=$(write_limit "$b"); fl=$(fill_limit "$(touched "$c")")
    fi
    printf '%-7s %-5s %10s %9.1f %7s %10s %9.1f %7s %12s\n' "$c" "$tool" "$d" "$wl" "$(ratio "$d" "$wl")" \
      "$r" "$fl" "$(ratio "$r" "$fl")" "$b"
    echo "$c $tool $d $r $b" >> "$work/all"
  done
  if [ -n "$CRIU" ]; then
    awk -v s="$c" '$1==s && $2=="crs" {cd=$3; cr=$4} $1==s && $2=="criu" {kd=$3; kr=$4}
      END {if (kd>0 && kr>0) printf "%-7s ratio crs/criu: dump %.2f, restore %.2f\n", s, cd/kd, cr/kr}' "$work/all"
  fi
done
echo "sleep: its limit columns are the issue's target (5 ms each way), not a measurement"
