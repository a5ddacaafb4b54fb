# A program driving another through a pseudo-terminal (as expect, script or a terminal
# emulator does): bash runs on the slave, as the leader of its own session with the slave as
# its controlling terminal, and this process holds the master. Bytes are left in flight both
# ways before it says "ready": bash has written a line this process has not read, and this
# process has typed a line bash has not read (bash reads it only on SIGUSR1). On "go" from
# stdin it signals bash and prints, "master: ..." a line, all that comes out of the master
# until bash ends.
import fcntl
import os
import pty
import signal
import struct
import sys
import termios
import time

pid, master = pty.fork()
if pid == 0:
    os.execvp("bash", ["bash", "--norc", "--noprofile", "-c",
                       "trap 'read -r line; echo \"got:$line ($(tty))\"; exit 0' USR1; "
                       "echo out-before; while :; do sleep 0.05; done"])
# Until bash has written its line (FIONREAD on the master), nothing is read from it.
while struct.unpack("i", fcntl.ioctl(master, termios.FIONREAD, b"\0\0\0\0"))[0] < len("out-before\r\n"):
    time.sleep(0.01)
os.write(master, b"typed-ahead\n")
time.sleep(0.1)
TIOCGPTN = getattr(termios, "TIOCGPTN", 0x80045430)
n = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0\0\0\0"))[0]
print("ready", "/dev/pts/%d" % n, flush=True)
if sys.stdin.readline().strip() != "go":
    sys.exit(2)
os.kill(pid, signal.SIGUSR1)
out = b""
while True:
    try:
        b = os.read(master, 4096)
    except OSError:
        break
    if not b:
        break
    out += b
for line in out.decode(errors="replace").splitlines():
    print("master:", line, flush=True)
_, status = os.waitpid(pid, 0)
print("bash ended", status, flush=True)
