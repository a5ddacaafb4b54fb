#!/bin/bash
# Downtime a service's clients see when it migrates with its established connections and its
# address (migrate --tcp-established --move-address), for several numbers of connections.
# Three namespaces on a bridge: the echo server (tests/targets/echo.py) on node a with the
# service address, restartd on node b, the clients (bench/tcp-clients.py) on node c, each
# connection echoing a line every 10 ms. Per run: the longest round the clients saw (a line
# on every connection, every echo back), the round before the migration (the baseline), the
# migration's frozen time and total time (migrate -v). CRIU has no migration of its own: with
# CRIU=path, a second table puts a checkpoint and a restore in place on node a (ckpt -k then
# rstrt, criu dump then criu restore, both --tcp-established, images in /dev/shm) side by side,
# with the longest round the clients saw across them.
# A third table: the migration with N connections waiting in the server's queue (WAITING).
# usage: bench/tcp-migrate.sh [CRS_BINARY]   (env CONNS="1 100 1000", WAITING="0 100 1000",
# RUNS=3, CRIU=). Needs
# root, iproute2, nftables, python3.
set -euo pipefail
cd "$(dirname "$0")"
CRS=$(realpath "${1:-../target/x86_64-unknown-linux-gnu/release/crs}")
CONNS=${CONNS:-"1 100 1000"}
RUNS=${RUNS:-3}
source ./lib.sh
BR=cbtbr$$ A=cbta$$ B=cbtb$$ C=cbtc$$
NET=10.78.0
work=$(mktemp -d /tmp/crs-tcpbench.XXXXXX)
shm=$(mktemp -d /dev/shm/crs-tcpbench.XXXXXX)
cleanup() {
  for ns in $A $B $C $BR; do
    for p in $(ip netns pids $ns 2>/dev/null); do kill -9 $p 2>/dev/null || true; done
    ip netns del $ns 2>/dev/null || true
  done
  rm -rf "$work" "$shm"
}
trap cleanup EXIT
for ns in $BR $A $B $C; do ip netns add $ns; done
ip -n $BR link add br0 type bridge; ip -n $BR link set br0 up
i=1
for ns in $A $B $C; do
  ip link add v$ns netns $ns type veth peer name p$ns netns $BR
  ip -n $BR link set p$ns master br0 up
  ip -n $ns addr add $NET.$i/24 dev v$ns; ip -n $ns link set v$ns up; ip -n $ns link set lo up
  i=$((i + 1))
done
"$CRS" keygen "$work/key" >/dev/null
ip netns exec $B env ${SHOW:+CRS_LOG=debug} "$CRS" restartd -b $NET.2 -p 1023 --key "$work/key" --allow-root --move-address 2>"$work/restartd.log" &
until grep -q listening "$work/restartd.log"; do sleep 0.01; done

# After a migration: its frozen and total ms (migrate -v) to $work/f and $work/t; the process
# at the destination and anything left at the source killed.
migrated() {
  awk '/frozen/ {for (i = 1; i <= NF; i++) if ($i == "frozen") print $(i + 1)}' "$work/migerr" >> "$work/f"
  awk '/frozen/ {for (i = 1; i <= NF; i++) if ($i == "in") print $(i + 1)}' "$work/migerr" >> "$work/t"
  kill -9 "$(awk '{print $NF}' "$work/mig")" 2>/dev/null || true
  for p in $(ip netns pids $A); do kill -9 $p 2>/dev/null || true; done
}

echo "machine: $(nproc) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r); three namespaces on a bridge; min/median/max of $RUNS runs"
printf '%-6s %-22s %-22s %-22s %-22s\n' conns "clients' longest (ms)" "baseline round (ms)" "frozen (ms)" "migrate total (ms)"
for n in $CONNS; do
  : > "$work/w"; : > "$work/base"; : > "$work/f"; : > "$work/t"
  for run in $(seq "$RUNS"); do
    # The service address and the server on a, each run.
    ip -n $B addr del $NET.100/24 dev v$B 2>/dev/null || true
    ip -n $A addr add $NET.100/24 dev v$A
    ip -n $C neigh flush all
    ip netns exec $A bash -c "$(declare -f bare); bare python3 ../tests/targets/echo.py $NET.100 7000" > "$work/srv" 2>&1 &
    until grep -q ready "$work/srv"; do sleep 0.01; done
    pid=$(awk '/ready/ {print $2}' "$work/srv")
    # A baseline without migration, then the run with one in its middle.
    ip netns exec $C python3 tcp-clients.py $NET.100 7000 "$n" 1 > "$work/base1"
    awk '/^ok/ {print $5}' "$work/base1" >> "$work/base"
    ip netns exec $C python3 tcp-clients.py $NET.100 7000 "$n" 4 > "$work/cl" &
    cl=$!
    until grep -q connected "$work/cl"; do sleep 0.01; done
    sleep 1
    ip netns exec $A "$CRS" migrate -v --key "$work/key" --tcp-established --move-address $NET.100/24 "$pid" $NET.2 \
      > "$work/mig" 2> "$work/migerr"
    wait $cl || true
    grep -q '^ok' "$work/cl" || { echo "run failed: $(cat "$work/cl") $(cat "$work/migerr")"; exit 1; }
    awk '/^ok/ {print $5}' "$work/cl" >> "$work/w"
    migrated
  done
  printf '%-6s %-22s %-22s %-22s %-22s\n' "$n" "$(stats 6 < "$work/w")" "$(stats 6 < "$work/base")" \
    "$(stats 6 < "$work/f")" "$(stats 6 < "$work/t")"
done

# Connections the server had not accepted yet: it accepts nothing before it is told (echo.py
# late), N clients on c each send a line and wait; migrated, then told, it echoes every line
# from b. The migration's frozen and total time beside the same with none waiting.
WAITING=${WAITING:-"0 100 1000"}
WAITERS='
import socket, sys
n = int(sys.argv[3])
conns = [socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60) for _ in range(n)]
for c in conns:
    c.sendall(b"waiting\n")
print("connected", flush=True)
for c in conns:
    if c.makefile("rb").readline() != b"waiting\n":
        print("bad: an echo lost", flush=True); sys.exit(1)
print("ok", n, flush=True)
'
echo
echo "connections waiting to be accepted (not one echoed before the migration, each after): ms"
printf '%-8s %-22s %-22s\n' waiting "frozen (ms)" "migrate total (ms)"
for n in $WAITING; do
  : > "$work/f"; : > "$work/t"
  for run in $(seq "$RUNS"); do
    ip -n $B addr del $NET.100/24 dev v$B 2>/dev/null || true
    ip -n $A addr add $NET.100/24 dev v$A
    ip -n $C neigh flush all
    rm -f "$work/go"
    ip netns exec $A bash -c "$(declare -f bare); bare python3 ../tests/targets/echo.py $NET.100 7000 late $work/go" > "$work/srv" 2>&1 &
    disown $!
    until grep -q ready "$work/srv"; do sleep 0.01; done
    pid=$(awk '/ready/ {print $2}' "$work/srv")
    ip netns exec $C python3 -c "$WAITERS" $NET.100 7000 "$n" > "$work/cl" &
    cl=$!
    until grep -q connected "$work/cl"; do sleep 0.01; done
    sleep 0.5
    ip netns exec $A env ${SHOW:+CRS_LOG=debug} "$CRS" migrate -v --key "$work/key" --tcp-established --move-address $NET.100/24 "$pid" $NET.2 \
      > "$work/mig" 2> "$work/migerr" || { echo "migrate failed: $(cat "$work/migerr")"; exit 1; }
    [ -n "${SHOW:-}" ] && cat "$work/migerr" >&2
    touch "$work/go"
    wait $cl || true
    grep -q '^ok' "$work/cl" || { echo "run failed: $(cat "$work/cl") $(cat "$work/migerr")"; exit 1; }
    migrated
  done
  printf '%-8s %-22s %-22s\n' "$n" "$(stats 6 < "$work/f")" "$(stats 6 < "$work/t")"
  [ -z "${SHOW:-}" ] || grep -v 'vma \| fd ' "$work/restartd.log" | tail -30 >&2
done

[ -n "${CRIU:-}" ] || exit 0
CRIU=$(realpath "$CRIU")
# In place on node a: the server checkpointed (and so killed) with its connections, restored
# at once; the clients pause meanwhile. crs: ckpt -k, rstrt -d; CRIU: dump, restore -d.
serve() { # starts the echo server on a (with the service address), its pid in $pid
  ip -n $B addr del $NET.100/24 dev v$B 2>/dev/null || true
  ip -n $A addr add $NET.100/24 dev v$A 2>/dev/null || true
  ip -n $C neigh flush all
  # (Its stdio opened inside the namespaces ip netns exec makes: CRIU finds no mount for a
  # file opened outside the mount namespace it dumps; and in a session of its own, which
  # CRIU asks of a process it dumps without --shell-job.)
  rm -f "$work/srv"
  ip netns exec $A bash -c "exec < /dev/null > $work/srv 2>&1; $(declare -f bare); bare setsid python3 ../tests/targets/echo.py $NET.100 7000" &
  until grep -qs ready "$work/srv"; do sleep 0.01; done
  pid=$(awk '/ready/ {print $2}' "$work/srv")
}
echo
echo "in place on node a, --tcp-established, images in /dev/shm: checkpoint (killing it), restore, clients' longest round; ms"
printf '%-6s %-22s %-22s %-22s %-22s %-22s %-22s\n' conns "ckpt crs" "dump criu" "rstrt crs" "restore criu" \
  "clients' crs" "clients' criu"
for n in $CONNS; do
  for f in ck cd rs rc wc wd; do : > "$work/$f"; done
  for run in $(seq "$RUNS"); do
    for tool in crs criu; do
      serve
      ip netns exec $C python3 tcp-clients.py $NET.100 7000 "$n" 4 > "$work/cl" &
      cl=$!
      until grep -q connected "$work/cl"; do sleep 0.01; done
      sleep 1
      rm -rf "$shm/img"; mkdir "$shm/img"
      t0=${EPOCHREALTIME//[!0-9]/}
      if [ $tool = crs ]; then
        ip netns exec $A "$CRS" ckpt -k --tcp-established -o "$shm/img/s.crf" "$pid" 2> "$work/err" \
          || { echo "crs ckpt failed: $(cat "$work/err")"; exit 1; }
        t1=${EPOCHREALTIME//[!0-9]/}
        ip netns exec $A "$CRS" rstrt -d "$shm/img/s.crf" > /dev/null 2>> "$work/err" \
          || { echo "crs rstrt failed: $(cat "$work/err")"; exit 1; }
      else
        # (In the server's own mount namespace too: each ip netns exec makes one, whose mounts
        # CRIU would try to dump.)
        nsenter -t "$pid" -m -n "$CRIU" dump -t "$pid" -D "$shm/img" --tcp-established -o dump.log \
          || { echo "criu dump failed: $(tail -5 "$shm/img/dump.log")"; exit 1; }
        t1=${EPOCHREALTIME//[!0-9]/}
        ip netns exec $A "$CRIU" restore -D "$shm/img" --tcp-established -d -o restore.log \
          || { echo "criu restore failed: $(tail -5 "$shm/img/restore.log")"; exit 1; }
      fi
      t2=${EPOCHREALTIME//[!0-9]/}
      wait $cl || true
      grep -q '^ok' "$work/cl" || { echo "$tool run failed: $(cat "$work/cl")"; exit 1; }
      if [ $tool = crs ]; then
        ms "$t0" "$t1" >> "$work/ck"; ms "$t1" "$t2" >> "$work/rs"; awk '/^ok/ {print $5}' "$work/cl" >> "$work/wc"
      else
        ms "$t0" "$t1" >> "$work/cd"; ms "$t1" "$t2" >> "$work/rc"; awk '/^ok/ {print $5}' "$work/cl" >> "$work/wd"
      fi
      for p in $(ip netns pids $A); do kill -9 $p 2>/dev/null || true; done
      while [ -n "$(ip netns pids $A)" ]; do sleep 0.01; done
    done
  done
  printf '%-6s %-22s %-22s %-22s %-22s %-22s %-22s\n' "$n" "$(stats 6 < "$work/ck")" "$(stats 6 < "$work/cd")" \
    "$(stats 6 < "$work/rs")" "$(stats 6 < "$work/rc")" "$(stats 6 < "$work/wc")" "$(stats 6 < "$work/wd")"
done
