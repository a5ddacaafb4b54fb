#!/bin/bash
# Migration between two network namespaces joined by a veth pair, next to the limits measured
# in the same run: the raw TCP throughput of that veth (a plain socket copy of the same number
# of bytes) and the first-touch fill rate of as much fresh memory. MB/s is the image size over
# the total time (migrate's, from the end of the handshake to the destination's Running);
# ratio is MB/s over the slower limit; began_at is how much of the image restartd had
# received when it began restoring (its log line), which shows the restore is pipelined.
# usage: bench/migrate.sh [CRS_BINARY]   (env SIZES="64 1024", RUNS=3). Needs root, iproute2.
set -euo pipefail
cd "$(dirname "$0")"
CRS=$(realpath "${1:-../target/x86_64-unknown-linux-gnu/release/crs}")
SIZES=${SIZES:-"64 1024"}
RUNS=${RUNS:-3}
. ./lib.sh
two_nodes 77 mig
cc -O2 -o "$work/netio" netio.c
cc -O2 -o "$work/dirty" dirty.c

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "machine: $(nproc) cpus, $(awk '/MemTotal/ {print int($2/1024)" MiB"}' /proc/meminfo), $(uname -r); veth between two namespaces; median of $RUNS runs"
# A VM whose host takes back memory freed a few seconds ago (virtio-balloon free page
# reporting) makes a first touch of it cost several times more: the large sizes then measure
# the host as much as crs. Said, not changed (as root: echo 11 > $order turns it off, until
# the previous value is written back).
order=/sys/module/page_reporting/parameters/page_reporting_order
if [ -r "$order" ] && [ "$(cat "$order")" -ge 0 ] && [ "$(cat "$order")" -le 10 ] && [ -d /sys/bus/virtio/drivers/virtio_balloon ]; then
  echo "note: free page reporting to the host may be on ($order is $(cat "$order")): figures for sizes above about 1 GiB vary with it"
fi
printf '%-6s %9s %9s %9s %10s %10s %10s %7s %9s\n' MiB total_ms frozen_ms MB/s tcp_MB/s fill_MB/s limit_MB/s ratio began_at
for size in $SIZES; do
  bytes=$((size << 20))
  : > "$work/m"; : > "$work/t"; : > "$work/f"; : > "$work/b"
  for _ in $(seq "$RUNS"); do
    # This VM hands freed memory back to its host after a few seconds (virtio free page
    # reporting); a first touch of such memory costs several times a touch of memory the guest
    # freed just now. Touch and free enough for the process and its restored copy, so the
    # migration meets the same warm memory as the fill limit below.
    "$work/netio" fill $((2 * bytes + (64 << 20))) >/dev/null
    # the process: its image is a little more than its dirty memory
    ip netns exec $A setsid "$work/dirty" "$size" </dev/null >/dev/null 2>&1 &
    pid=$!
    until [ "$(awk '/^Rss:/ {s+=$2} END {print s+0}' /proc/$pid/smaps_rollup 2>/dev/null || echo 0)" -ge $((size * 1024)) ]; do sleep 0.01; done
    out=$(ip netns exec $A "$CRS" migrate -v --key "$work/key" "$pid" 10.77.0.2 2>&1)
    wait $pid 2>/dev/null || true
    # "migrate: frozen F ms, B bytes in T ms (R MB/s)"
    echo "$out" | awk '/frozen/ {gsub(/[(),]/,""); print $3, $8, $5}' >> "$work/m"
    new=$(echo "$out" | awk '/runs there/ {print $NF}'); kill -9 "$new" 2>/dev/null || true
    # restartd: "... restored as pid N, BYTES bytes (began at B), running": how much of the
    # image had arrived when the destination began restoring
    grep "restored as pid $new," "$work/restartd.log" | tail -1 |
      sed -E 's/.* ([0-9]+) bytes \(began at ([0-9]+)\).*/\2 \1/' | awk '{printf "%.3f\n", 100 * $1 / $2}' >> "$work/b"
    # the limits, same bytes
    ip netns exec $B "$work/netio" recv 5001 > "$work/recv" &
    rp=$!
    until grep -q listening "$work/recv"; do sleep 0.01; done
    ip netns exec $A "$work/netio" send 10.77.0.2 5001 "$bytes" >/dev/null
    wait $rp
    tail -1 "$work/recv" | awk '{printf "%.1f\n", $1/$2/1e6}' >> "$work/t"
    "$work/netio" fill "$bytes" | awk '{printf "%.1f\n", $1/$2/1e6}' >> "$work/f"
  done
  total=$(cut -d' ' -f2 "$work/m" | median); frozen=$(cut -d' ' -f1 "$work/m" | median)
  img=$(cut -d' ' -f3 "$work/m" | median)
  tcp=$(median < "$work/t"); fill=$(median < "$work/f"); began=$(median < "$work/b")
  awk -v s="$size" -v t="$total" -v f="$frozen" -v b="$img" -v tcp="$tcp" -v fill="$fill" -v bg="$began" 'BEGIN {
    rate = b / (t / 1000) / 1e6; lim = (tcp < fill) ? tcp : fill
    printf "%-6s %9.0f %9.0f %9.0f %10.0f %10.0f %10.0f %6.0f%% %8.3f%%\n", s, t, f, rate, tcp, fill, lim, 100 * rate / lim, bg }'
done
