# A multiprocessing.Pool (worker processes, pipes, POSIX semaphores unlinked at once, the
# pool's handler threads) computing a known result: the sum of i*i for i < N, item by item,
# in order (imap). Prints "ready" once it has begun, a line every 100 items ("at I SUM") and
# "total SUM" at the end; the test checks every line against its own arithmetic.
import multiprocessing as mp
import sys
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 3000


def square(x):
    time.sleep(0.002)
    return x * x


if __name__ == '__main__':
    with mp.Pool(3) as pool:
        total = 0
        for i, r in enumerate(pool.imap(square, range(N))):
            total += r
            if i == 50:
                print("ready", flush=True)
            if i % 100 == 0:
                print("at", i, total, flush=True)
        print("total", total, flush=True)
