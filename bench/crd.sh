#!/bin/bash
# The two backends side by side, in the qemu guest of tests/kernel/run.sh (Debian 12's 6.1,
# TCG emulation: its times compare with each other only): a single-threaded process with
# MIB MiB of dirty anonymous memory, checkpointed (it runs on) to a tmpfs file RUNS times
# through the ptrace engine and through /dev/crd, and each image restarted by rstrt through
# both (rstrt -d returns once the process runs).
# usage: bench/crd.sh [CRS_BINARY]; env SIZES (MiB, default "64 256"), RUNS (default 3),
# KERNELS (default 6.1; "6.1 backports" for both, see tests/kernel/run.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
guest=$(mktemp /tmp/crd-bench.XXXXXX.sh)
trap 'rm -f "$guest"' EXIT
cat > "$guest" <<GUEST
SIZES="${SIZES:-64 256}"
RUNS=${RUNS:-3}
GUEST
cat >> "$guest" <<'GUEST'
/bin/busybox insmod /crd.ko || { echo "BENCH FAIL insmod"; /bin/guestexit 1; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%d", (b - a) * 1000 }'; }
up() { cut -d' ' -f1 /proc/uptime; }
echo "BENCH guest: $(uname -r), $(grep -c ^processor /proc/cpuinfo) vCPU, TCG; times in ms (10 ms resolution)"
echo "BENCH MiB   ckpt     run  ckpt_wall  frozen  image_MB  rstrt_ptrace  rstrt_crd"
for mib in $SIZES; do
  rm -f /tmp/b.log
  /bin/migrant - $mib </dev/null >>/tmp/b.log 2>/dev/null &
  pid=$!
  wait_line /tmp/b.log ready 0 >/dev/null || { echo "BENCH FAIL target"; /bin/guestexit 1; }
  for run in $(seq 1 $RUNS); do
    for b in ptrace crd; do
      t0=$(up)
      out=$(/bin/crs ckpt --backend $b -v -o /tmp/b.crf $pid 2>&1) || { echo "BENCH FAIL ckpt $b: $out"; /bin/guestexit 1; }
      t1=$(up)
      frozen=$(echo "$out" | sed -n 's/.*frozen \([0-9.]*\) ms.*/\1/p')
      mb=$(( $(stat -c %s /tmp/b.crf) / 1000000 ))
      kill -STOP $pid
      t2=$(up)
      new=$(/bin/crs rstrt -d /tmp/b.crf) || { echo "BENCH FAIL rstrt $b"; /bin/guestexit 1; }
      t3=$(up)
      kill -9 $new
      t4=$(up)
      new=$(/bin/crs rstrt --backend crd -d /tmp/b.crf 2>/dev/null) || { echo "BENCH FAIL rstrt --backend crd $b"; /bin/guestexit 1; }
      t5=$(up)
      kill -9 $new
      kill -CONT $pid
      rm -f /tmp/b.crf
      printf "BENCH %-5s %-8s %-4s %-10s %-7s %-9s %-13s %s\n" $mib $b $run $(ms $t0 $t1) "$frozen" $mb $(ms $t2 $t3) $(ms $t4 $t5)
    done
  done
  kill -9 $pid
  wait $pid 2>/dev/null
done
GUEST
GUEST_BENCH="$guest" KERNELS="${KERNELS:-6.1}" bash "$here/../tests/kernel/run.sh" "$@"
