#!/bin/bash
# Checkpoint and restart on Debian 12's own kernel (6.1) and on the newer one bookworm-backports
# ships, each in a qemu guest (software emulation), with the kernel module (kmod/) built against
# that kernel's headers: crs must work on the kernels users run, not only on the one it is
# developed on.
# usage: tests/kernel/run.sh [CRS_BINARY]; installs what it needs (Debian packages). Root.
# KERNELS="6.1 backports" (the default) chooses the kernels.
# With GUEST_BENCH=SCRIPT (bench/crd.sh sets it), the guest runs SCRIPT instead of the tests,
# with more memory, and its "BENCH" lines are printed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CRS=$(realpath "${1:-$here/../../target/x86_64-unknown-linux-gnu/release/crs}")
work=$(mktemp -d /tmp/crs-kernel.XXXXXX)
trap 'rm -rf "$work"' EXIT

if ! command -v qemu-system-x86_64 >/dev/null || ! [ -x /bin/busybox ] || ! dpkg -s linux-headers-amd64 >/dev/null 2>&1 || ! command -v make >/dev/null || ! command -v xz >/dev/null; then
  # qemu-system-x86 from bookworm-backports: bookworm's own conflicts with the installed qemu-utils.
  if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      > /etc/apt/sources.list.d/crs-backports.sources
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends busybox-static cpio make xz-utils linux-headers-amd64 >/dev/null
fi
# The kernels as their headers name them (the ABI number changes with updates): Debian 12's own,
# and the one of bookworm-backports (its headers by their full name: installing the metapackage
# from backports would replace Debian 12's).
kernels=""
for k in ${KERNELS:-6.1 backports}; do
  case $k in
    6.1) kernels="$kernels $(dpkg-query -W -f='${Depends}' linux-headers-amd64 | sed -n 's/^linux-headers-\([^ ]*\).*/\1/p')" ;;
    backports)
      bpo=$(apt-cache show -t bookworm-backports linux-headers-amd64 2>/dev/null | sed -n 's/^Depends: linux-headers-\([^ ]*\) .*/\1/p' | head -1)
      if [ -z "$bpo" ]; then
        echo "kernel from bookworm-backports: not found in apt's lists (is bookworm-backports a source?)"
        exit 1
      fi
      if ! dpkg -s "linux-headers-$bpo" >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "linux-headers-$bpo" >/dev/null
      fi
      kernels="$kernels $bpo" ;;
    *) echo "KERNELS: $k? (6.1 or backports)"; exit 2 ;;
  esac
done

# One guest: that kernel, busybox, crs, its test targets, the module; the guest's init runs the
# tests (or GUEST_BENCH) and says how it went through qemu's exit code.
guest() {
kver=$1
rm -rf "$work/k" && mkdir -p "$work/k"
(cd "$work/k" && apt-get download -qq "linux-image-$kver-unsigned" >/dev/null 2>&1 || apt-get download -qq "linux-image-$kver" >/dev/null)
mods="kernel/net/unix/unix_diag.ko kernel/net/ipv4/inet_diag.ko kernel/net/ipv4/tcp_diag.ko"
dpkg-deb --fsys-tarfile "$work"/k/linux-image-*.deb > "$work/k/image.tar"
tar -x -C "$work/k" -f "$work/k/image.tar" "./boot/vmlinuz-$kver"
for m in $mods; do
  # Newer kernels ship their modules xz-compressed; busybox insmod wants them plain.
  if tar -x -C "$work/k" -f "$work/k/image.tar" "./lib/modules/$kver/$m" 2>/dev/null; then :; else
    tar -x -C "$work/k" -f "$work/k/image.tar" "./lib/modules/$kver/$m.xz"
    xz -d "$work/k/lib/modules/$kver/$m.xz"
  fi
done
root="$work/root"
rm -rf "$root"
mkdir -p "$root/bin" "$root/proc" "$root/sys" "$root/dev" "$root/tmp"
cp /bin/busybox "$root/bin/busybox"
cp "$CRS" "$root/bin/crs"
# Debian loads unix_diag when sock_diag is first asked about a unix socket; the guest has no
# module tree, so its init loads it (crs finds the peer of a unix socket through it).
cp "$work/k/lib/modules/$kver/kernel/net/unix/unix_diag.ko" "$root/unix_diag.ko"
# Likewise inet_diag and tcp_diag: a listener's backlog is read through them.
cp "$work/k/lib/modules/$kver/kernel/net/ipv4/inet_diag.ko" "$root/inet_diag.ko"
cp "$work/k/lib/modules/$kver/kernel/net/ipv4/tcp_diag.ko" "$root/tcp_diag.ko"
cc -O1 -static -o "$root/bin/migrant" "$here/../targets/migrant.c"
cc -O1 -static -o "$root/bin/attrs" "$here/../targets/attrs.c"
cc -O1 -static -pthread -o "$root/bin/lazy" "$here/../targets/lazy.c"
cc -O1 -static -o "$root/bin/writer" "$here/../targets/writer.c"
cc -O1 -static -pthread -o "$root/bin/threads" "$here/../targets/threads.c"
cc -O1 -static -pthread -o "$root/bin/events" "$here/../targets/events.c"
cc -O1 -static -pthread -o "$root/bin/ptimers" "$here/../targets/ptimers.c"
cc -O1 -static -o "$root/bin/tree" "$here/../targets/tree.c"
cc -O1 -static -o "$root/bin/pairs" "$here/../targets/pairs.c"
cc -O1 -static -o "$root/bin/memfd" "$here/../targets/memfd.c"
cc -O1 -static -o "$root/bin/sysv" "$here/../targets/sysv.c"
cc -O1 -static -pthread -o "$root/bin/seccomp" "$here/../targets/seccomp.c"
cc -O1 -static -o "$root/bin/caps" "$here/../targets/caps.c"
cc -O1 -static -o "$root/bin/clocks" "$here/../targets/clocks.c"
cc -O1 -static -o "$root/bin/pty" "$here/../targets/pty.c"
cc -O1 -static -o "$root/bin/inet" "$here/../targets/inet.c"
cc -O1 -static -o "$root/bin/guestexit" "$here/guestexit.c"
cc -O1 -static -o "$root/bin/asuser" "$here/asuser.c"
cc -O1 -static -o "$root/bin/regs" "$here/../targets/regs.c"
cc -O1 -static -o "$root/bin/tracer" "$here/tracer.c"
cc -O1 -static -o "$root/bin/noptrace" "$here/noptrace.c"
# The kernel backend, built against the guest kernel's headers (warnings are errors: kmod/Kbuild).
rm -rf "$work/kmod" && cp -r "$here/../../kmod" "$work/kmod"
make -s -C "$work/kmod" KVER="$kver" >"$work/kmod.log" 2>&1 || { cat "$work/kmod.log"; echo "kernel $kver: crd.ko does not build"; exit 1; }
cp "$work/kmod/crd.ko" "$root/crd.ko"
cp "$here/../../kmod/test/guest.sh" "$root/crd-guest.sh"
mem=512
if [ -n "${GUEST_BENCH:-}" ]; then
  cp "$GUEST_BENCH" "$root/bench.sh"
  mem=2048
fi
cp "$here/init" "$root/init"
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet) > "$work/initrd"

set +e
timeout 600 qemu-system-x86_64 -accel tcg -cpu max -m $mem -nic none -no-reboot -display none -monitor none \
  -serial "file:$work/console" -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
  -kernel "$work/k/boot/vmlinuz-$kver" -initrd "$work/initrd" -append "console=ttyS0 quiet panic=-1" </dev/null
status=$?
set -e
if [ -n "${GUEST_BENCH:-}" ]; then
  grep -a "^BENCH\|FAIL\|BUG\|WARNING" "$work/console" | sed 's/^BENCH //'
  [ "$status" -eq 1 ] || { echo "kernel $kver: benchmark FAILED (qemu status $status)"; exit 1; }
  return 0
fi
grep -a "GUEST\|BUG\|WARNING\|Oops\|ckpt:\|rstrt:\|crs\|vdso\|vvar\|trailer\|^ok\|^warn\|FAIL" "$work/console" || true
# qemu exits with (code << 1) | 1: 1 means the guest said 0.
if [ "$status" -ne 1 ]; then
  echo "kernel $kver: FAILED (qemu status $status)"
  exit 1
fi
echo "kernel $kver: checkpoint and restart work"
}

for kver in $kernels; do
  guest "$kver"
done
