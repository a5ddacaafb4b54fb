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

bare() { # runs a command with no fd above 2
  local f n
  for f in /proc/$BASHPID/fd/*; do
    n=${f##*/}
    [ "$n" -gt 2 ] && eval "exec $n>&-"
  done
  exec "$@"
}
stats() { sort -n | awk '{a[NR]=$1} END {printf "%7.1f %7.1f %7.1f", a[1], a[int((NR+1)/2)], a[NR]}'; }
now() { echo "${EPOCHREALTIME//[!0-9]/}"; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f\n", (b - a) / 1000}'; }
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
gone() { # pids: waits until each is reaped (zombies have no command line for pgrep to see)
  local p
  for p in "$@"; do
    for _ in $(seq 400); do [ -e "/proc/$p" ] || continue 2; sleep 0.05; done
    echo "pid $p still there after 20 s" >&2
    exit 1
  done
}
settle() { # pattern [pid to keep]: waits until pgrep lists nothing else
  local left
  for _ in $(seq 400); do
    left=$(pgrep -f "$1" | grep -vx "${2:-none}" || true)
    [ -z "$left" ] && return 0
    sleep 0.05
  done
  echo "still running after 20 s: $(echo "$left" | tr '\n' ' ')($1)" >&2
  exit 1
}
criu_frozen() {
  python3 - "$1/stats-dump" <<'PY'
import struct, sys
b = open(sys.argv[1], 'rb').read()
n = struct.unpack('<I', b[8:12])[0]
def fields(pb):
    i, out = 0, {}
    def varint():
        nonlocal i
        v = sh = 0
        while True:
            c = pb[i]; i += 1; v |= (c & 0x7f) << sh; sh += 7
            if c < 0x80: return v
    while i < len(pb):
        key = varint(); f, wt = key >> 3, key & 7
        if wt == 0: out[f] = varint()
        elif wt == 2: l = varint(); out[f] = pb[i:i + l]; i += l
        else: raise SystemExit('unexpected wire type')
    return out
d = fields(fields(b[12:12 + n])[1])
print('%.1f' % ((d.get(1, 0) + d.get(2, 0)) / 1000))
PY
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
    t0=$(now)
    out=$("$CRS" ckpt -v -o "$img" "$pid" 2>&1) || { echo "ckpt failed: $out" >&2; exit 1; }
    t1=$(now)
    ms "$t0" "$t1" >>"$work/ckpt.ms"
    echo "$out" | sed -n 's/.*frozen \([0-9.]*\) ms/\1/p' >>"$work/frozen.ms"
    kill -STOP $(tree "$pid")
    t0=$(now)
    new=$("$CRS" rstrt --pidns -d --inherit-stdio "$img" <&$hold {hold}>&- 2>"$work/rstrt.err") ||
      { kill -CONT $(tree "$pid"); echo "rstrt failed: $(cat "$work/rstrt.err")" >&2; exit 1; }
    t1=$(now)
    ms "$t0" "$t1" >>"$work/rstrt.ms"
    crs_copy=$(pss "$new")
    kill -9 "$new"
    settle "rstrt .*$shm/"
    settle "$work/forest" "$(tree "$pid")"
    kill -CONT $(tree "$pid")
    crs_img=$(( $(stat -c %s "$img") >> 20 ))
    rm -f "$img"
  done
  crs_cells="$(stats <"$work/frozen.ms")|$(stats <"$work/ckpt.ms")|$(stats <"$work/rstrt.ms")"
  if [ -n "${CRIU:-}" ]; then
    for _ in $(seq "$RUNS"); do
      d=$(mktemp -d "$shm/criu.XXXXXX")
      t0=$(now)
      "$CRIU" dump -t "$pid" -D "$d" --leave-running --shell-job -o dump.log >/dev/null 2>&1 ||
        { echo "criu dump failed: $(tail -3 "$d/dump.log")" >&2; exit 1; }
      t1=$(now)
      ms "$t0" "$t1" >>"$work/cckpt.ms"
      criu_frozen "$d" >>"$work/cfrozen.ms"
      rm -rf "$d"
    done
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
      t0=$(now)
      "$CRIU" restore -d -D "$d" --shell-job --inherit-fd "fd[$hold]:$stdin" -o restore.log >/dev/null 2>&1 ||
        { echo "criu restore failed: $(grep -m3 Error "$d/restore.log")" >&2; exit 1; }
      t1=$(now)
      ms "$t0" "$t1" >>"$work/crstrt.ms"
      criu_copy=$(pss "$pid")
      kill -9 $(tree "$pid")
    done
    settle "$work/forest"
    gone $members
    rm -rf "$d"
    IFS='|' read -r f1 f2 f3 <<<"$crs_cells"
    printf "%-10s| $c  $c | $c  $c | $c  $c | %s\n" "$label" "$f1" "$(stats <"$work/cfrozen.ms")" \
      "$f2" "$(stats <"$work/cckpt.ms")" "$f3" "$(stats <"$work/crstrt.ms")" \
      "$crs_img/$crs_copy, $criu_img/$criu_copy, $orig"
  else
    IFS='|' read -r f1 f2 f3 <<<"$crs_cells"
    printf "%-10s| $c  $c | $c  $c | $c  $c | %s\n" "$label" "$f1" "-" "$f2" "-" "$f3" "-" "$crs_img/$crs_copy, -, $orig"
  fi
  touch "$go"
  wait 2>/dev/null || true
done
echo "target: crs at or below CRIU on each row, and no copy's Pss above the original's"
