"""Test client: N connects to HOST:PORT in a tight loop, closing each at
once, or as many as fit in SECONDS if given. Prints a JSON count of the
outcomes by errno name ("OK" for a connection).

usage: connect_loop.py HOST PORT N [SECONDS]"""
import errno, json, socket, sys, time

host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
until = time.monotonic() + float(sys.argv[4]) if len(sys.argv) > 4 else None
family = socket.AF_INET6 if ":" in host else socket.AF_INET
outcomes = {}
try:
    for _ in range(n):
        if until is not None and time.monotonic() > until:
            break
        s = socket.socket(family, socket.SOCK_STREAM)
        try:
            s.settimeout(5)
            s.connect((host, port))
            what = "OK"
        except OSError as e:
            what = errno.errorcode.get(e.errno, str(e.errno))
        finally:
            s.close()
        outcomes[what] = outcomes.get(what, 0) + 1
except KeyboardInterrupt:  # SIGINT ends a timed run early
    pass
print(json.dumps(outcomes), flush=True)
