#!/bin/bash
# Checkpoint and restore of process trees against their size, beside CRIU (issue 11): a tree
# of 1, 8 and 64 processes, each with 16 MiB of anonymous memory it wrote, and the COW case,
# a parent with 256 MiB and 4 children forked after it wrote them (they share them).
# usage: bench/trees.sh [CRS_BINARY]   (env RUNS=5, ROWS="1 8 64 cow"; CRIU=path to a criu
# binary to measure it beside). Root.
# Each cell is min / median / max in ms over RUNS runs:
#   frozen  crs: `ckpt -v -o FILE`'s "frozen" figure; criu: `dump --leave-running`'s
#           freezing + frozen time from its stats-dump.
#   ckpt    wall clock of crs `ckpt -o FILE` / criu `dump --leave-running --shell-job -D DIR`,
#           FILE and DIR on /dev/shm; the tree runs on between runs.
#   rstrt   wall clock of crs `rstrt --pidns -d --inherit-stdio FILE` (a copy in a pid
#           namespace of its own; the original is stopped meanwhile) / criu `restore -d
#           --shell-job` of one dump taken with the original killed, RUNS times; each copy is
#           killed and gone before the next run.
# Then, per row, the image size (crs file, criu directory) and the memory of the tree: the sum
# of its processes' Pss (smaps_rollup) in MiB for the original and for each tool's copy, so a
# copy that doubles shared memory shows.
set -euo pipefail
cd "$(dirname "$0")"
CRS=$(realpath "${1:-../target/x86_64-unknown-linux-gnu/release/crs}")
RUNS=${RUNS:-5}
ROWS=${ROWS:-"1 8 64 cow"}
work=$(mktemp -d /tmp/crs-trees.XXXXXX)
shm=$(mktemp -d /dev/shm/crs-trees.XXXXXX)
trap 'pkill -9 -f "$work/forest" 2>/dev/null || true; pkill -9 -f "rstrt .*$shm/" 2>/dev/null || true
      rm -rf "$work" "$shm"' EXIT
cc -O2 -o "$work/forest" forest.c
mkfifo "$work/stdin"
exec {hold}<>"$work/stdin" # the copies' stdin never sees EOF

. ./lib.sh
stats7() { stats 7; }
tree() { # pid -> it and its descendants
  local p=$1 k
  echo "$p"
  for k in $(cat /proc/"$p"/task/*/children 2>/dev/null); do tree "$k"; done
}
pss() { # root pid -> MiB of Pss of its tree
  local sum=0 p v
  for p in $(tree "$1"); do
    v=$(awk '/^Pss:/ {print $2}' /proc/"$p"/smaps_rollup 2>/dev/null || echo 0)
    sum=$((sum + ${v:-0}))
  done
  echo $((sum / 1024))
}

c="%-23s"
printf "%-10s| %-48s | %-48s | %-48s | %s\n" "" "frozen ms" "ckpt wall ms" "rstrt wall ms" "image MiB, tree Pss MiB"
printf "%-10s| $c  $c | $c  $c | $c  $c | %s\n" tree "crs (min med max)" "criu" "crs" "criu" "crs" "criu" \
  "crs img/copy, criu img/copy, original"
for row in $ROWS; do
  rm -f "$work"/*.ms "$work/out"
  if [ "$row" = cow ]; then args="5 256 cow" label="cow 5x256"; else args="$row 16" label="$row x 16"; fi
  k=$((${k:-0} + 1)) go=$work/go.$k
  (while [ ! -e "$go" ] && [ -d "$work" ]; do sleep 0.1; done; echo done) | (bare "$work/forest" $args) >"$work/out" 2>&1 &
  tpid=$!
  for _ in $(seq 600); do grep -q ready "$work/out" && break; sleep 0.05; done
  pid=$(sed -n 's/^ready //p' "$work/out")
  [ "$pid" = "$tpid" ] || { echo "target did not start: $(cat "$work/out")" >&2; exit 1; }
  orig=$(pss "$pid")
  for _ in $(seq "$RUNS"); do
    img=$shm/crs.crf
    t0=${EPOCHREALTIME//[!0-9]/}
    out=$("$CRS" ckpt -v -o "$img" "$pid" 2>&1) || { echo "ckpt failed: $out" >&2; exit 1; }
    t1=${EPOCHREALTIME//[!0-9]/}
    ms "$t0" "$t1" >>"$work/ckpt.ms"
    echo "$out" | sed -n 's/.*frozen \([0-9.]*\) ms/\1/p' >>"$work/frozen.ms"
    kill -STOP $(tree "$pid")
    t0=${EPOCHREALTIME//[!0-9]/}
    new=$("$CRS" rstrt --pidns -d --inherit-stdio "$img" <&$hold {hold}>&- 2>"$work/rstrt.err") ||
      { kill -CONT $(tree "$pid"); echo "rstrt failed: $(cat "$work/rstrt.err")" >&2; exit 1; }
    t1=${EPOCHREALTIME//[!0-9]/}
    ms "$t0" "$t1" >>"$work/rstrt.ms"
    crs_copy=$(pss "$new")
    kill -9 "$new"
    settle "rstrt .*$shm/"
    settle "$work/forest" "$(tree "$pid")"
    kill -CONT $(tree "$pid")
    crs_img=$(( $(stat -c %s "$img") >> 20 ))
    rm -f "$img"
  done
  crs_cells="$(stats7 <"$work/frozen.ms")|$(stats7 <"$work/ckpt.ms")|$(stats7 <"$work/rstrt.ms")"
  if [ -n "${CRIU:-}" ]; then
    criu_dumps "$pid"
    stdin=$(readlink "/proc/$pid/fd/0")
    members=$(tree "$pid")
    d=$(mktemp -d "$shm/criu.XXXXXX")
    "$CRIU" dump -t "$pid" -D "$d" --shell-job -o dump.log >/dev/null 2>&1 ||
      { echo "criu dump failed: $(tail -3 "$d/dump.log")" >&2; exit 1; }
    criu_img=$(( $(du -sb "$d" | cut -f1) >> 20 ))
    touch "$go"
    wait "$tpid" 2>/dev/null || true
    for _ in $(seq "$RUNS"); do
      settle "$work/forest"
      gone $members
      t0=${EPOCHREALTIME//[!0-9]/}
      "$CRIU" restore -d -D "$d" --shell-job --inherit-fd "fd[$hold]:$stdin" -o restore.log >/dev/null 2>&1 ||
        { echo "criu restore failed: $(grep -m3 Error "$d/restore.log")" >&2; exit 1; }
      t1=${EPOCHREALTIME//[!0-9]/}
      ms "$t0" "$t1" >>"$work/crstrt.ms"
      criu_copy=$(pss "$pid")
      kill -9 $(tree "$pid")
    done
    settle "$work/forest"
    gone $members
    rm -rf "$d"
    IFS='|' read -r f1 f2 f3 <<<"$crs_cells"
    printf "%-10s| $c  $c | $c  $c | $c  $c | %s\n" "$label" "$f1" "$(stats7 <"$work/cfrozen.ms")" \
      "$f2" "$(stats7 <"$work/cckpt.ms")" "$f3" "$(stats7 <"$work/crstrt.ms")" \
      "$crs_img/$crs_copy, $criu_img/$criu_copy, $orig"
  else
    IFS='|' read -r f1 f2 f3 <<<"$crs_cells"
    printf "%-10s| $c  $c | $c  $c | $c  $c | %s\n" "$label" "$f1" "-" "$f2" "-" "$f3" "-" "$crs_img/$crs_copy, -, $orig"
  fi
  touch "$go"
  wait 2>/dev/null || true
done
echo "target: crs at or below CRIU on each row, and no copy's Pss above the original's"
