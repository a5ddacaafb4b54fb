import threading, time, sys
f = open(sys.argv[1], 'w', buffering=1)
counts = [0]*4
big = bytearray(200 << 20)
def work(i):
    while True:
        counts[i] += 1
        big[(counts[i] * 4096 * (i+1)) % len(big)] = counts[i] & 255
        if counts[i] % 1000 == 0:
            time.sleep(0.001)
for i in range(4):
    threading.Thread(target=work, args=(i,), daemon=True).start()
n = 0; last = time.monotonic()
while True:
    time.sleep(0.02); n += 1
    now = time.monotonic(); gap = (now - last) * 1000; last = now
    f.write(f"tick {n} gap_ms {gap:.0f} counts {counts}\n")
