# A TCP echo server of the tests' own: listens on ADDR PORT, says "ready PID", and echoes
# every line each client sends back to it, on as many connections as come (epoll through
# selectors, one thread).
import os, resource, selectors, socket, sys

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
l = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_STREAM)
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((sys.argv[1], int(sys.argv[2])))
l.listen(1024)
sel = selectors.DefaultSelector()
sel.register(l, selectors.EVENT_READ)
print("ready", os.getpid(), flush=True)
while True:
    for key, _ in sel.select():
        s = key.fileobj
        if s is l:
            c, _ = l.accept()
            sel.register(c, selectors.EVENT_READ)
            continue
        data = s.recv(65536)
        if not data:
            sel.unregister(s)
            s.close()
        else:
            s.sendall(data)
