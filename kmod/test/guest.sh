# The kernel backend, /dev/crd, in the test guest (sourced by tests/kernel/init, which defines
# fail and wait_line): checkpoints through the module, restarts with the ptrace engine, and
# the refusals. One "GUEST PASS: crd ..." line per case. Yama's ptrace_scope=3 cannot be
# undone: that case comes last.
/bin/busybox insmod /crd.ko || fail "insmod crd.ko"
mode=$(ls -l /dev/crd | cut -c1-10)
[ "$mode" = "crw-------" ] || fail "crd: /dev/crd is $mode, not crw-------"
echo "GUEST PASS: crd loaded, /dev/crd $mode"

# 1. Runs on: the image restores with the ptrace engine, whose process finds its memory, its
# registers (the counter of checks) and its log (stdout, a regular file opened O_APPEND).
/bin/migrant - 16 </dev/null >>/tmp/c1.log 2>/dev/null &
pid=$!
wait_line /tmp/c1.log ready 0 >/dev/null || fail "crd: target did not start"
kill -USR1 $pid
wait_line /tmp/c1.log ok 1 >/dev/null || fail "crd: target check before"
/bin/crs ckpt --backend crd -v -o /tmp/c1.crf $pid 2>&1 | sed 's/^/GUEST /' || fail "crd: ckpt"
[ -s /tmp/c1.crf ] || fail "crd: no image"
grep -q "TracerPid:	0" /proc/$pid/status || fail "crd: the target saw a tracer"
kill -USR1 $pid
l=$(wait_line /tmp/c1.log ok 2) || fail "crd: the target did not run on: $(cat /tmp/c1.log)"
case "$l" in *check=2*) ;; *) fail "crd: running on, state lost: $l" ;; esac
kill -9 $pid; wait $pid 2>/dev/null
/bin/crs crfinfo /tmp/c1.crf > /tmp/c1.info || fail "crd: crfinfo refuses the image: $(cat /tmp/c1.info)"
new=$(/bin/crs rstrt -d /tmp/c1.crf) || fail "crd: rstrt of the module's image"
kill -USR1 $new
l=$(wait_line /tmp/c1.log ok 3) || fail "crd: no verdict after restore: $(cat /tmp/c1.log)"
case "$l" in *check=2*) ;; *) fail "crd: state lost: $l" ;; esac
echo "GUEST PASS: crd checkpoint (runs on), ptrace restart: $l"
# The same process through both backends: the same mappings (placement, protection, kind,
# name, flags) and the same size of XSAVE area.
/bin/crs ckpt --backend crd -o /tmp/c1m.crf $new || fail "crd: ckpt of the restored process"
/bin/crs ckpt --backend ptrace -o /tmp/c1p.crf $new || fail "crd: ptrace ckpt of the restored process"
/bin/crs crfinfo /tmp/c1m.crf | grep -E "^  [0-9a-f]+-|xsave" | awk '{$4=""; print}' | sed 's/rip.*xsave/xsave/' > /tmp/c1m.map
/bin/crs crfinfo /tmp/c1p.crf | grep -E "^  [0-9a-f]+-|xsave" | awk '{$4=""; print}' | sed 's/rip.*xsave/xsave/' > /tmp/c1p.map
cmp -s /tmp/c1m.map /tmp/c1p.map || { diff /tmp/c1p.map /tmp/c1m.map; fail "crd: the two backends see the process differently"; }
echo "GUEST PASS: crd and ptrace images agree: $(wc -l < /tmp/c1m.map) lines, $(grep xsave /tmp/c1m.map)"
kill -9 $new

# 1b. Registers: vector, x87 and general registers loaded by one asm block around a raw read(0)
# where the checkpoint (through the module) comes; the read is re-issued after the restore by
# the engine of backend $2. Its stdout, /tmp/$1.log, is reopened where it was: the verdict
# follows "ready".
regs_case() { # name backend
  sleep 30 | /bin/regs avx > /tmp/$1.log 2>&1 &
  sleep 0.3
  rpid=$(pidof regs) || fail "crd: regs did not start"
  grep -q pipe_read /proc/$rpid/wchan || fail "crd: regs is not in its read: $(cat /proc/$rpid/wchan)"
  /bin/crs ckpt --backend crd -k -o /tmp/$1.crf $rpid || fail "crd: ckpt regs"
  echo x | /bin/crs rstrt --backend $2 /tmp/$1.crf > /tmp/$1.err 2>&1 &
  l=$(wait_line /tmp/$1.log ok 0) || fail "crd: regs restarted by $2: $(cat /tmp/$1.log /tmp/$1.err)"
  echo "$l"
}
l=$(regs_case r ptrace) || exit 1
echo "GUEST PASS: crd registers: $l"

# 2. --kill: the process is gone once ckpt returns; the image brings it back.
/bin/migrant - 8 </dev/null >>/tmp/c2.log 2>/dev/null &
pid=$!
wait_line /tmp/c2.log ready 0 >/dev/null || fail "crd: target 2 did not start"
/bin/crs ckpt --backend crd -k -o /tmp/c2.crf $pid || fail "crd: ckpt -k"
wait $pid
st=$?
[ $st = 137 ] || fail "crd: ckpt -k: the target ended with $st, not SIGKILL"
new=$(/bin/crs rstrt -d /tmp/c2.crf) || fail "crd: rstrt after -k"
kill -USR1 $new
l=$(wait_line /tmp/c2.log ok 1) || fail "crd: no verdict after -k and restore: $(cat /tmp/c2.log)"
case "$l" in *check=1*) ;; *) fail "crd: state lost after -k: $l" ;; esac
echo "GUEST PASS: crd kill, ptrace restart: $l"
kill -9 $new

# 2b. A process already traced (as under gdb or strace), which the ptrace engine cannot take.
/bin/tracer /bin/migrant - 4 </dev/null >>/tmp/c2b.log 2>/dev/null &
wait_line /tmp/c2b.log ready 0 >/dev/null || fail "crd: traced target did not start"
pid=$(sed -n 's/^ready //p' /tmp/c2b.log)
grep -q "TracerPid:	0" /proc/$pid/status && fail "crd: the target is not traced"
/bin/crs ckpt --backend ptrace -o /tmp/c2b.crf $pid 2>/dev/null && fail "crd: the ptrace engine took a traced process"
/bin/crs ckpt --backend crd -o /tmp/c2b.crf $pid || fail "crd: ckpt of a traced process"
kill -USR1 $pid
wait_line /tmp/c2b.log ok 1 >/dev/null || fail "crd: the traced process does not run on"
kill -9 $pid
new=$(/bin/crs rstrt -d /tmp/c2b.crf) || fail "crd: rstrt of a traced process's image"
kill -USR1 $new
l=$(wait_line /tmp/c2b.log ok 2) || fail "crd: traced, no verdict after restore: $(cat /tmp/c2b.log)"
case "$l" in *check=1*) ;; *) fail "crd: traced, state lost: $l" ;; esac
grep -q "TracerPid:	0" /proc/$new/status || fail "crd: the restored process is traced"
echo "GUEST PASS: crd takes a traced process: $l"
kill -9 $new

# R. Restart through the module: its own image, the ptrace engine's, registers, a corrupt image,
# stop and notify.
/bin/migrant - 8 </dev/null >>/tmp/r1.log 2>/dev/null &
pid=$!
wait_line /tmp/r1.log ready 0 >/dev/null || fail "crd restart: target did not start"
kill -USR1 $pid
wait_line /tmp/r1.log ok 1 >/dev/null || fail "crd restart: target check before"
/bin/crs ckpt --backend crd -k -o /tmp/r1.crf $pid || fail "crd restart: ckpt"
wait $pid 2>/dev/null
new=$(/bin/crs rstrt --backend crd -d /tmp/r1.crf 2>/tmp/r1.err) || fail "crd restart: rstrt: $(cat /tmp/r1.err)"
[ "$new" = "$pid" ] || fail "crd restart: pid $pid was free, yet it came back as $new: $(cat /tmp/r1.err)"
kill -USR1 $new
l=$(wait_line /tmp/r1.log ok 2) || fail "crd restart: no verdict: $(cat /tmp/r1.log /tmp/r1.err)"
case "$l" in *check=2*) ;; *) fail "crd restart: state lost: $l" ;; esac
echo "GUEST PASS: crd checkpoint, crd restart, same pid $new: $l"
# Its executable is its program again (CRD_RESTART_EXE).
exe=$(readlink /proc/$new/exe)
[ "$exe" = /bin/migrant ] || fail "crd restart: /proc/$new/exe names $exe: $(cat /tmp/r1.err)"
grep -q "names crs" /tmp/r1.err && fail "crd restart: rstrt says: $(cat /tmp/r1.err)"
echo "GUEST PASS: crd restart: /proc/$new/exe names $exe"
# ... and the restarted process checkpoints and restarts again, through the other engine.
/bin/crs ckpt --backend ptrace -k -o /tmp/r2.crf $new || fail "crd restart: ptrace ckpt of a crd-restarted process"
new2=$(/bin/crs rstrt --backend crd -d /tmp/r2.crf 2>/dev/null) || fail "crd restart: rstrt of a ptrace image"
kill -USR1 $new2
l=$(wait_line /tmp/r1.log ok 3) || fail "crd restart: no verdict after the ptrace image: $(cat /tmp/r1.log)"
case "$l" in *check=3*) ;; *) fail "crd restart: ptrace image, state lost: $l" ;; esac
echo "GUEST PASS: ptrace checkpoint, crd restart: $l"
[ "$(readlink /proc/$new2/exe)" = /bin/migrant ] || fail "crd restart: the ptrace image's restart names $(readlink /proc/$new2/exe)"
kill -9 $new2
# A program of its own (a copy nothing else runs): held as execve holds it while the restarted
# process runs (not writable), let go when it ends (writable, and executable, again).
mkdir -p /tmp/own && cp /bin/migrant /tmp/own/migrant
/tmp/own/migrant - 2 </dev/null >>/tmp/x1.log 2>/dev/null &
pid=$!
wait_line /tmp/x1.log ready 0 >/dev/null || fail "crd exe: target did not start"
/bin/crs ckpt --backend crd -k -o /tmp/x1.crf $pid || fail "crd exe: ckpt"
wait $pid 2>/dev/null
w=$( ( : >> /tmp/own/migrant ) 2>&1) || fail "crd exe: the program is busy with nothing running it: $w"
x=$(/bin/crs rstrt --backend crd -d /tmp/x1.crf 2>/tmp/x1.err) || fail "crd exe: rstrt: $(cat /tmp/x1.err)"
[ "$(readlink /proc/$x/exe)" = /tmp/own/migrant ] || fail "crd exe: /proc/$x/exe names $(readlink /proc/$x/exe)"
( : >> /tmp/own/migrant ) 2>/dev/null && fail "crd exe: its program can be written while it runs"
kill -USR1 $x
v=$(wait_line /tmp/x1.log ok 1) || fail "crd exe: no verdict: $(cat /tmp/x1.log)"
kill -9 $x
# (Dead once a zombie: its memory, and its executable with it, is gone by then.)
i=0
while [ -e /proc/$x ] && ! grep -q "^State:.Z" /proc/$x/status 2>/dev/null; do
  i=$((i + 1)); [ $i -lt 200 ] || fail "crd exe: pid $x does not die"; sleep 0.05
done
w=$( ( : >> /tmp/own/migrant ) 2>&1) || fail "crd exe: its program stays unwritable after it ended: $w"
/tmp/own/migrant - 1 </dev/null >/tmp/x2.log 2>/dev/null &
y=$!
wait_line /tmp/x2.log ready 0 >/dev/null || fail "crd exe: its program no longer executes"
kill -9 $y
wait $y 2>/dev/null
echo "GUEST PASS: crd exe: /proc/PID/exe names its program, unwritable while it runs, writable and executable once it ended: $v"
l=$(regs_case r3 crd) || exit 1
echo "GUEST PASS: crd restart, registers: $l"
# Through a pipe, both ways: the module writes into it, rstrt copies it to memory first.
/bin/migrant - 4 </dev/null >>/tmp/p1.log 2>/dev/null &
pid=$!
wait_line /tmp/p1.log ready 0 >/dev/null || fail "crd pipe: target did not start"
new=$( (/bin/crs ckpt --backend crd -k -o - $pid | /bin/crs rstrt --backend crd -d -) 2>/tmp/p1.err) || fail "crd pipe: $(cat /tmp/p1.err)"
kill -USR1 $new
l=$(wait_line /tmp/p1.log ok 0) || fail "crd pipe: no verdict: $(cat /tmp/p1.log /tmp/p1.err)"
echo "GUEST PASS: crd through a pipe, pid $pid now $new: $l"
kill -9 $new
# A corrupt image (one byte of a page flipped) is refused, and nothing runs.
cp /tmp/r1.crf /tmp/bad.crf
printf '\377' | dd of=/tmp/bad.crf bs=1 seek=20000 conv=notrunc 2>/dev/null
out=$(/bin/crs rstrt --backend crd -d /tmp/bad.crf 2>&1) && fail "crd restart: a corrupt image ran"
case "$out" in *checksum*|*CRC*|*damaged*) ;; *) fail "crd restart: corrupt image: $out" ;; esac
echo "GUEST PASS: crd restart refuses a corrupt image: $out"
# --stop: restarted, stopped before it runs; it goes on once continued.
new=$(/bin/crs rstrt --backend crd --stop -d /tmp/r1.crf 2>/dev/null) || fail "crd restart: --stop"
i=0; while [ $i -lt 100 ] && ! grep -q "^State:	T" /proc/$new/status; do i=$((i+1)); sleep 0.05; done
grep -q "^State:	T" /proc/$new/status || fail "crd restart: --stop: $(grep State /proc/$new/status)"
kill -USR1 $new; kill -CONT $new
l=$(wait_line /tmp/r1.log ok 4) || fail "crd restart: --stop, no verdict: $(cat /tmp/r1.log)"
case "$l" in *check=2*) ;; *) fail "crd restart: --stop, state lost: $l" ;; esac
echo "GUEST PASS: crd restart --stop: $l"
kill -9 $new

# Root restarting a user's image: the process is that user's; an image file a user owns may not
# claim root.
mkdir -p /etc
printf 'root:x:0:0:root:/:/bin/sh\nuser:x:1000:1000:user:/tmp:/bin/sh\n' > /etc/passwd
printf 'root:x:0:\nuser:x:1000:\n' > /etc/group
touch /tmp/u.log; chmod 666 /tmp/u.log
/bin/asuser 1000 /bin/migrant - 2 </dev/null >>/tmp/u.log 2>/dev/null &
upid=$!
wait_line /tmp/u.log ready 0 >/dev/null || fail "crd restart: user target did not start"
/bin/crs ckpt --backend crd -k -o /tmp/u.crf $upid || fail "crd restart: ckpt of a user's process"
wait $upid 2>/dev/null
chown 1000 /tmp/u.crf
new=$(/bin/crs rstrt --backend crd -d /tmp/u.crf 2>/tmp/u.err) || fail "crd restart: root restarting a user's image: $(cat /tmp/u.err)"
grep -q "^Uid:	1000	1000	1000	1000" /proc/$new/status || fail "crd restart: not the user's: $(grep Uid /proc/$new/status)"
kill -USR1 $new
l=$(wait_line /tmp/u.log ok 0) || fail "crd restart: user's process, no verdict: $(cat /tmp/u.log)"
echo "GUEST PASS: crd restart of a user's image by root, as uid 1000: $l"
kill -9 $new
cp /tmp/r1.crf /tmp/claim.crf; chown 1000 /tmp/claim.crf
out=$(/bin/crs rstrt --backend crd -d /tmp/claim.crf 2>&1) && fail "crd restart: a user's file restarted as root"
case "$out" in *"belongs to uid 1000"*) ;; *) fail "crd restart: claim refusal: $out" ;; esac
echo "GUEST PASS: crd restart refuses a user's file that claims root: $out"

# 3. Refused by name, and the process runs on as it was: threads.
/bin/migrant - 4 2 </dev/null >>/tmp/c3.log 2>/dev/null &
pid=$!
wait_line /tmp/c3.log ready 0 >/dev/null || fail "crd: target 3 did not start"
out=$(/bin/crs ckpt --backend crd -o /tmp/c3.crf $pid 2>&1) && fail "crd: a threaded process was checkpointed"
case "$out" in *threads*) ;; *) fail "crd: refusal does not name the threads: $out" ;; esac
[ -e /tmp/c3.crf ] && fail "crd: a refused checkpoint left an image"
kill -USR1 $pid
l=$(wait_line /tmp/c3.log ok 1) || fail "crd: refused target does not run on"
case "$l" in ok*threads=2*) ;; *) fail "crd: refused target: $l" ;; esac
echo "GUEST PASS: crd refuses threads: $out"
/bin/crs ckpt --backend ptrace -o /tmp/c3p.crf $pid || fail "crd: ptrace ckpt of the threaded process"
out=$(/bin/crs rstrt --backend crd -d /tmp/c3p.crf 2>&1) && fail "crd: a threaded image was restarted"
case "$out" in *threads*) ;; *) fail "crd: restart refusal does not name the threads: $out" ;; esac
echo "GUEST PASS: crd restart refuses threads: $out"
kill -9 $pid

# 4. Permission: a user may not checkpoint root's process, even with the device open to all.
/bin/migrant - 1 </dev/null >>/tmp/c4.log 2>/dev/null &
pid=$!
wait_line /tmp/c4.log ready 0 >/dev/null || fail "crd: target 4 did not start"
chmod 0666 /dev/crd
out=$(/bin/asuser 1000 /bin/crs ckpt --backend crd -o /tmp/c4.crf $pid 2>&1) && fail "crd: a user checkpointed root's process"
chmod 0600 /dev/crd
case "$out" in *"not allowed"*) ;; *) fail "crd: permission refusal: $out" ;; esac
out2=$(/bin/asuser 1000 /bin/crs ckpt --backend crd -o /tmp/c4.crf $pid 2>&1) && fail "crd: a user opened /dev/crd 0600"
case "$out2" in *"permission denied"*) ;; *) fail "crd: device refusal: $out2" ;; esac
echo "GUEST PASS: crd permission: $out"
echo "GUEST PASS: crd device mode: $out2"
kill -9 $pid

# S. A caller whose seccomp filter forbids ptrace (a sandbox): the ptrace engine is refused, the
# default backend falls back to /dev/crd.
/bin/migrant - 2 </dev/null >>/tmp/s1.log 2>/dev/null &
pid=$!
wait_line /tmp/s1.log ready 0 >/dev/null || fail "crd: sandbox target did not start"
/bin/noptrace /bin/crs ckpt --backend ptrace -o /tmp/s1p.crf $pid 2>/dev/null && fail "crd: ptrace worked in the sandbox"
out=$(/bin/noptrace /bin/crs ckpt -v -o /tmp/s1.crf $pid 2>&1) || fail "crd: auto in the sandbox: $out"
case "$out" in *"/dev/crd"*) ;; *) fail "crd: auto in the sandbox did not say /dev/crd: $out" ;; esac
kill -9 $pid; wait $pid 2>/dev/null
new=$(/bin/noptrace /bin/crs rstrt --backend crd -d /tmp/s1.crf 2>/dev/null) || fail "crd: restart in the sandbox"
kill -USR1 $new
l=$(wait_line /tmp/s1.log ok 0) || fail "crd: sandbox, no verdict: $(cat /tmp/s1.log)"
grep -q "^Seccomp:	2" /proc/$new/status || fail "crd: the restarted process lost the sandbox it was restarted in"
echo "GUEST PASS: crd in a seccomp sandbox without ptrace: $l"
kill -9 $new

# M. Migration through the module at both ends (over loopback: source and destination are this
# node): the process is stopped while its image goes, killed once the destination runs it.
/bin/crs keygen /tmp/key >/dev/null || fail "crd migrate: keygen"
mig() { # backend pid [migrate's own options]: migrates pid, prints its pid there
  /bin/crs restartd $1 -b 127.0.0.1 -p 1023 --key /tmp/key --allow-root 2>/tmp/rd.log &
  rd=$!
  wait_line /tmp/rd.log "" 0 >/dev/null
  i=0; while [ $i -lt 100 ] && ! grep -q listening /tmp/rd.log; do i=$((i+1)); sleep 0.05; done
  out=$(/bin/crs migrate $1 ${3:-} --key /tmp/key $2 127.0.0.1 2>&1) || { kill $rd; echo "crd migrate ($1): $out; restartd said: $(cat /tmp/rd.log)" > /tmp/mig.out; return 1; }
  kill $rd; wait $rd 2>/dev/null
  echo "$out" > /tmp/mig.out
  echo "$out" | sed -n 's/.* as pid \([0-9]*\).*/\1/p'
}
/bin/migrant - 4 </dev/null >>/tmp/m1.log 2>/dev/null &
pid=$!
wait_line /tmp/m1.log ready 0 >/dev/null || fail "crd migrate: target did not start"
# Its program is the same file at the destination (this node): its pages stay out of the image,
# as with --no-binary.
/bin/crs ckpt --backend crd -o /tmp/m1full.crf $pid || fail "crd migrate: ckpt"
/bin/crs ckpt --backend crd --no-binary -o /tmp/m1nb.crf $pid || fail "crd migrate: ckpt --no-binary"
full=$(stat -c %s /tmp/m1full.crf); nb=$(stat -c %s /tmp/m1nb.crf)
new=$(mig "--backend crd" $pid -v) || fail "$(cat /tmp/mig.out)"
sent=$(sed -n 's/.* \([0-9]*\) bytes in .*/\1/p' /tmp/mig.out)
[ -n "$sent" ] && [ $((sent * 2)) -lt $((full + nb)) ] || fail "crd migrate: $sent bytes sent, against $full for the whole image and $nb without the program: $(cat /tmp/mig.out)"
[ -n "$new" ] || fail "crd migrate: no new pid"
wait $pid 2>/dev/null
[ -d /proc/$pid ] && fail "crd migrate: the source still runs"
kill -USR1 $new
l=$(wait_line /tmp/m1.log ok 0) || fail "crd migrate: no verdict: $(cat /tmp/m1.log)"
case "$l" in *check=1*) ;; *) fail "crd migrate: state lost: $l" ;; esac
echo "GUEST PASS: crd migrate, pid $pid now $new, $sent bytes (image $full, $nb without the program): $l"
kill -9 $new

# 5. Yama ptrace_scope=3 forbids ptrace to everyone, root too: the default backend falls back
# to /dev/crd, says so at -v, and the process runs on untraced.
if [ -e /proc/sys/kernel/yama/ptrace_scope ]; then
  /bin/migrant - 2 </dev/null >>/tmp/c5.log 2>/dev/null &
  pid=$!
  wait_line /tmp/c5.log ready 0 >/dev/null || fail "crd: target 5 did not start"
  echo 3 > /proc/sys/kernel/yama/ptrace_scope
  /bin/crs ckpt --backend ptrace -o /tmp/c5p.crf $pid 2>/dev/null && fail "crd: ptrace worked under Yama 3"
  out=$(/bin/crs ckpt -v -o /tmp/c5.crf $pid 2>&1) || fail "crd: auto under Yama 3: $out"
  case "$out" in *"/dev/crd"*) ;; *) fail "crd: auto did not say it used /dev/crd: $out" ;; esac
  /bin/crs crfinfo /tmp/c5.crf >/dev/null || fail "crd: image under Yama 3"
  kill -USR1 $pid
  wait_line /tmp/c5.log ok 1 >/dev/null || fail "crd: target under Yama 3 does not run on"
  echo "GUEST PASS: crd under Yama ptrace_scope=3: $(echo "$out" | grep -c crd) lines name it"
  kill -9 $pid
  # The restart needs no ptrace either.
  new=$(/bin/crs rstrt --backend crd -d /tmp/c5.crf 2>/dev/null) || fail "crd: restart under Yama 3"
  kill -USR1 $new
  l=$(wait_line /tmp/c5.log ok 2) || fail "crd: restart under Yama 3, no verdict: $(cat /tmp/c5.log)"
  case "$l" in *check=1*) ;; *) fail "crd: restart under Yama 3, state lost: $l" ;; esac
  echo "GUEST PASS: crd restart under Yama ptrace_scope=3: $l"
  kill -9 $new
  # Migration with the default backends at both ends: both find ptrace forbidden.
  /bin/migrant - 2 </dev/null >>/tmp/m2.log 2>/dev/null &
  pid=$!
  wait_line /tmp/m2.log ready 0 >/dev/null || fail "crd: migrate target under Yama 3 did not start"
  new=$(mig "" $pid) || fail "$(cat /tmp/mig.out)"
  kill -USR1 $new
  l=$(wait_line /tmp/m2.log ok 0) || fail "crd: migrate under Yama 3, no verdict: $(cat /tmp/m2.log)"
  echo "GUEST PASS: crd migrate under Yama ptrace_scope=3 (default backends): $l"
  kill -9 $new
else
  fail "crd: this kernel has no Yama (/proc/sys/kernel/yama/ptrace_scope)"
fi
if dmesg | grep -E "BUG|WARNING|Oops|Call Trace" >/tmp/kmsg; then
  cat /tmp/kmsg
  fail "crd: the kernel complained"
fi
echo "GUEST PASS: crd left no kernel warning"
