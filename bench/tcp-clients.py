# The clients of bench/tcp-migrate.sh: N connections to ADDR:PORT; every 10 ms a numbered line
# on each, all echoes awaited; after SECONDS prints the rounds, the longest round (the
# downtime the clients saw) and whether every echo came back in order.
import resource, select, socket, sys, time

addr, port, n, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
conns = [socket.create_connection((addr, port), timeout=30) for _ in range(n)]
print("connected", flush=True)
ep = select.epoll()
for c in conns:
    ep.register(c.fileno(), select.EPOLLIN)
byfd = {c.fileno(): c for c in conns}
end = time.time() + secs
rounds, worst, i = 0, 0.0, 0
while time.time() < end:
    t = time.time()
    line = b"%d\n" % i
    for c in conns:
        c.sendall(line)
    pending = {c.fileno(): b"" for c in conns}
    while pending:
        for fd, _ in ep.poll(30):
            got = byfd[fd].recv(64)
            if not got:
                print("bad: a connection closed", flush=True); sys.exit(1)
            pending[fd] += got
            if pending[fd] == line:
                del pending[fd]
            elif not line.startswith(pending[fd]):
                print("bad: sent %r, got %r" % (line, pending[fd]), flush=True); sys.exit(1)
    worst = max(worst, time.time() - t)
    rounds += 1
    i += 1
    time.sleep(0.01)
print("ok %d rounds, longest %.1f ms" % (rounds, worst * 1000), flush=True)
