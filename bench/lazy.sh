#!/bin/bash
# Lazy restore (rstrt --lazy) beside the eager one and the limit, in one run: a process with N
# MiB of dirty anonymous memory (cases: env SIZES, default "1024 4096"), checkpointed to
# /dev/shm, restored
#   eager: rstrt -d IMG, until it prints the pid (every page in, the process running);
#   lazy:  rstrt --lazy -d IMG, until it prints the pid (the process running: "run_ms"), and
#          until it exits (every page in: "all_ms");
# and, given CRIU, CRIU beside it (its images from its own dump of the same process):
#   criu:      criu restore -d, until it returns (every page in, the process running);
#   criu-lazy: criu restore --lazy-pages -d with criu lazy-pages serving the images, until
#              the restore returns ("run_ms") and until the lazy-pages daemon exits ("all_ms");
# beside the first-touch fill of N MiB of fresh memory (netio fill, "fill_ms"). Issue 14's
# targets: the lazy process runs within 20 ms, and its pages are all in at >= 80% of the
# fill rate ("rate" = fill_ms / (all_ms - run_ms), the part after the process runs).
# usage: bench/lazy.sh [CRS_BINARY] [CRIU_BINARY]   (env SIZES, RUNS=5). Needs root.
# Prints min/median/max.
set -euo pipefail
cd "$(dirname "$0")"
CRS=${1:-../target/x86_64-unknown-linux-gnu/release/crs}
CRIU=${2:-}
SIZES=${SIZES:-"1024 4096"}
RUNS=${RUNS:-5}
work=$(mktemp -d /dev/shm/crs-lazy.XXXXXX)
trap 'pkill -9 -f "$work/dirty" 2>/dev/null || true; rm -rf "$work"' EXIT
cc -O2 -o "$work/dirty" dirty.c
cc -O2 -o "$work/netio" netio.c
. ./lib.sh # bare, now, ms, stats

image() { # $1 = MiB -> $work/img.crf, the process killed
  local pid want rss
  setsid "$work/dirty" "$1" </dev/null >/dev/null 2>&1 &
  pid=$!
  want=$(($1 * 1024))
  while :; do
    rss=$(awk '/^Rss:/ {s+=$2} END {print s+0}' "/proc/$pid/smaps_rollup" 2>/dev/null || echo 0)
    [ "$rss" -ge "$want" ] && break
    sleep 0.01
  done
  "$CRS" ckpt --frozen -o "$work/img.crf" "$pid" >/dev/null # (frozen, as the figures before session 29)
  if [ -n "$CRIU" ]; then
    rm -rf "$work/criu"; mkdir "$work/criu"
    "$CRIU" dump -t "$pid" -D "$work/criu" --leave-running -o dump.log >/dev/null 2>&1 ||
      { echo "criu dump failed: $(tail -3 "$work/criu/dump.log")" >&2; exit 1; }
  fi
  kill -9 "$pid"
  wait "$pid" 2>/dev/null || true
}

# One restore: $1 = extra rstrt options -> "run_ms all_ms" (the process killed after).
restore() {
  local t0 t1 t2 pid
  # Warm memory: this VM is slow to hand back memory freed seconds ago (see ckpt-restore.sh).
  "$work/netio" fill $(((SIZE + 64) << 20)) >/dev/null
  t0=${EPOCHREALTIME//[!0-9]/}
  # shellcheck disable=SC2086
  pid=$("$CRS" rstrt $1 -d "$work/img.crf" | { read -r p; now >"$work/t1"; echo "$p"; })
  t2=${EPOCHREALTIME//[!0-9]/}
  t1=$(cat "$work/t1")
  kill -9 "$pid"
  while [ -e "/proc/$pid" ]; do sleep 0.01; done
  echo "$(ms "$t0" "$t1") $(ms "$t0" "$t2")"
}

# One CRIU restore: $1 = "" or "lazy" -> "run_ms all_ms" (the process killed after).
restore_criu() {
  local t0 t1 t2 pid
  "$work/netio" fill $(((SIZE + 64) << 20)) >/dev/null
  if [ "$1" = lazy ]; then
    rm -f "$work/criu/lazy-pages.socket" # the last run's: connecting to it would be refused
    "$CRIU" lazy-pages -D "$work/criu" -o lazy.log >/dev/null 2>&1 &
    lp=$!
    until [ -S "$work/criu/lazy-pages.socket" ]; do sleep 0.005; done
  fi
  t0=${EPOCHREALTIME//[!0-9]/}
  "$CRIU" restore -D "$work/criu" -d ${1:+--lazy-pages} -o restore.log >/dev/null 2>&1 ||
    { echo "criu restore failed: $(tail -3 "$work/criu/restore.log")" >&2; exit 1; }
  t1=${EPOCHREALTIME//[!0-9]/}
  [ "$1" = lazy ] && wait "$lp"
  t2=${EPOCHREALTIME//[!0-9]/}
  pid=$(pgrep -n -f "$work/dirty")
  kill -9 "$pid"
  while [ -e "/proc/$pid" ]; do sleep 0.01; done
  echo "$(ms "$t0" "$t1") $(ms "$t0" "$t2")"
}

echo "machine: $(nproc) cpus, $(awk '/MemTotal/ {print int($2/1024)" MiB"}' /proc/meminfo), $(uname -r); images on /dev/shm; min/median/max of $RUNS runs"
printf '%-6s %-9s %20s %20s %20s %6s\n' MiB mode run_ms all_ms fill_ms rate
for SIZE in $SIZES; do
  image "$SIZE"
  for mode in eager lazy ${CRIU:+criu criu-lazy}; do
    : >"$work/r"
    for _ in $(seq "$RUNS"); do
      case $mode in
        eager) restore "" ;;
        lazy) restore --lazy ;;
        criu) restore_criu "" ;;
        criu-lazy) restore_criu lazy ;;
      esac >>"$work/r"
    done
    : >"$work/f"
    for _ in $(seq "$RUNS"); do "$work/netio" fill $((SIZE << 20)) | awk '{print $2 * 1000}' >>"$work/f"; done
    fill=$(sort -n "$work/f" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    rate=$(awk -v f="$fill" '{d = $2 - $1; if (d > 0) print f / d}' "$work/r" | sort -n | awk '{a[NR]=$1} END {printf "%.2f", a[int((NR+1)/2)]}')
    case $mode in eager | criu) rate=$(awk -v f="$fill" '{print f / $2}' "$work/r" | sort -n | awk '{a[NR]=$1} END {printf "%.2f", a[int((NR+1)/2)]}') ;;
    esac
    printf '%-6s %-9s %20s %20s %20s %6s\n' "$SIZE" "$mode" "$(cut -d' ' -f1 "$work/r" | stats)" \
      "$(cut -d' ' -f2 "$work/r" | stats)" "$(stats <"$work/f")" "$rate"
  done
  rm -f "$work/img.crf"
done
echo "eager, criu: run_ms = all_ms (it runs once every page is in); rate = fill_ms / all_ms"
echo "lazy, criu-lazy: rate = fill_ms / (all_ms - run_ms); targets: run_ms <= 20, rate >= 0.80"
