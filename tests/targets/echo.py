# A TCP echo server of the tests' own: listens on ADDR PORT, says "ready PID", and echoes
# every line each client sends back to it, on as many connections as come (epoll through
# selectors, one thread). With "late PATH" after them, it accepts nothing before PATH exists
# (its clients wait in the listener's queue).
import os, resource, selectors, socket, sys

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
l = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_STREAM)
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((sys.argv[1], int(sys.argv[2])))
l.listen(1024)
late = sys.argv[4] if sys.argv[3:4] == ["late"] else None
sel = selectors.DefaultSelector()
if late is None:
    sel.register(l, selectors.EVENT_READ)
print("ready", os.getpid(), flush=True)
while True:
    if late is not None and os.path.exists(late):
        sel.register(l, selectors.EVENT_READ)
        late = None
    for key, _ in sel.select(None if late is None else 0.05):
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
