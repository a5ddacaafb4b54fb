# A multiprocessing pool's shape: a parent that loads 200 MiB (a bytearray) before it forks
# three workers (start method "fork"), which only read it: each hashes its own slice every
# 200 ms and writes a line "wN PID COUNT DIGEST"; the parent checks the whole of it every
# second ("parent True"). Writes "ready PID" once the workers run.
# usage: python3 shared_pool.py LOG
import hashlib
import multiprocessing as mp
import os
import sys
import time

log = open(sys.argv[1], "a", buffering=1)
data = bytearray(os.urandom(1 << 20)) * 200
digest = hashlib.sha1(data).hexdigest()


def work(i):
    n = 0
    while True:
        h = hashlib.sha1(memoryview(data)[i << 24:(i + 1) << 24]).hexdigest()
        n += 1
        log.write(f"w{i} {os.getpid()} {n} {h[:8]}\n")
        time.sleep(0.2)


if __name__ == "__main__":
    mp.set_start_method("fork")
    workers = [mp.Process(target=work, args=(i,)) for i in range(3)]
    for w in workers:
        w.start()
    log.write(f"ready {os.getpid()}\n")
    while True:
        time.sleep(1)
        log.write(f"parent {hashlib.sha1(data).hexdigest() == digest}\n")
