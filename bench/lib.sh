# Helpers the benchmarks share; sourced, not run.

# Runs a command with no fd above 2: a leaked one (a CI runner's pipe) would make ckpt refuse.
bare() {
  local f n
  for f in /proc/$BASHPID/fd/*; do
    n=${f##*/}
    [ "$n" -gt 2 ] && eval "exec $n>&-"
  done
  exec "$@"
}

# min / median / max of the numbers on stdin, each in a cell WIDTH wide (default 6).
stats() {
  sort -n | awk -v w="${1:-6}" '{a[NR]=$1} END {f = "%" w ".1f"; printf f " " f " " f, a[1], a[int((NR+1)/2)], a[NR]}'
}
# Microseconds, printed (for a pipeline's end). To time a command, assign
# t=${EPOCHREALTIME//[!0-9]/} instead: $(now) forks a subshell, and the fork (0.6 ms on a
# slow VM) would count in the time measured.
now() { echo "${EPOCHREALTIME//[!0-9]/}"; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f\n", (b - a) / 1000}'; }

criu_frozen() { # dir -> freezing+frozen ms from CRIU's stats-dump
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
d = fields(fields(b[12:12 + n])[1])   # stats_entry.dump: freezing_time 1, frozen_time 2 (us)
print('%.1f' % ((d.get(1, 0) + d.get(2, 0)) / 1000))
PY
}

# Waits until `pgrep -f $1` lists nothing but $2 (may be empty); fails after 20 s.
settle() {
  local left
  for _ in $(seq 400); do
    left=$(pgrep -f "$1" | grep -vx "${2:-none}" || true)
    [ -z "$left" ] && return 0
    sleep 0.05
  done
  echo "still running after 20 s: $(echo "$left" | tr '\n' ' ')($1)" >&2
  exit 1
}
gone() { # pids: waits until each is reaped (a zombie has no command line for pgrep to see)
  local p
  for p in "$@"; do
    for _ in $(seq 400); do [ -e "/proc/$p" ] || continue 2; sleep 0.05; done
    echo "pid $p still there after 20 s" >&2
    exit 1
  done
}

# RUNS leave-running CRIU dumps of `pid` ($1) into $shm: the wall time of each to
# $work/cckpt.ms, CRIU's own freezing + frozen time to $work/cfrozen.ms.
criu_dumps() {
  local d t0 t1
  for _ in $(seq "$RUNS"); do
    d=$(mktemp -d "$shm/criu.XXXXXX")
    t0=${EPOCHREALTIME//[!0-9]/}
    "$CRIU" dump -t "$1" -D "$d" --leave-running --shell-job -o dump.log >/dev/null 2>&1 ||
      { echo "criu dump failed: $(tail -3 "$d/dump.log")" >&2; exit 1; }
    t1=${EPOCHREALTIME//[!0-9]/}
    ms "$t0" "$t1" >>"$work/cckpt.ms"
    criu_frozen "$d" >>"$work/cfrozen.ms"
    rm -rf "$d"
  done
}

# Two nodes for a migration benchmark: network namespaces $A and $B joined by a veth pair,
# 10.SUBNET.0.1 and 10.SUBNET.0.2, a work directory $work, and a restartd in $B on port 1023
# keyed with $work/key (its log $work/restartd.log); all removed on exit. $CRS must be set.
# usage: two_nodes SUBNET TAG   (TAG: a few letters naming the benchmark)
two_nodes() {
  A=crs$2-a$$ B=crs$2-b$$ VA=c${2}a$$ VB=c${2}b$$
  work=$(mktemp -d "/tmp/crs-$2.XXXXXX")
  trap two_nodes_gone EXIT
  ip netns add "$A"; ip netns add "$B"
  ip link add "$VA" netns "$A" type veth peer name "$VB" netns "$B"
  ip -n "$A" addr add "10.$1.0.1/24" dev "$VA"; ip -n "$B" addr add "10.$1.0.2/24" dev "$VB"
  for ns in $A $B; do ip -n "$ns" link set lo up; done
  ip -n "$A" link set "$VA" up; ip -n "$B" link set "$VB" up
  "$CRS" keygen "$work/key" >/dev/null
  ip netns exec "$B" "$CRS" restartd -b "10.$1.0.2" -p 1023 --key "$work/key" --allow-root 2>"$work/restartd.log" &
  disown
  until grep -q listening "$work/restartd.log"; do sleep 0.01; done
}
two_nodes_gone() {
  for ns in $A $B; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$work"
}
