# A TCP echo server of the tests' own: listens on ADDR PORT, says "ready PID", and echoes
# every line each client sends back to it, on as many connections as come (select, one
# thread).
import os, select, socket, sys

l = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((sys.argv[1], int(sys.argv[2])))
l.listen(64)
print("ready", os.getpid(), flush=True)
conns = []
while True:
    r, _, _ = select.select([l] + conns, [], [])
    for s in r:
        if s is l:
            c, _ = l.accept()
            conns.append(c)
            continue
        data = s.recv(65536)
        if not data:
            conns.remove(s)
            s.close()
        else:
            s.sendall(data)
