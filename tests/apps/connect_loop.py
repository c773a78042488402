"""Test client: N connects to HOST:PORT in a tight loop, closing each at
once. Prints a JSON count of the outcomes by errno name ("OK" for a
connection).

usage: connect_loop.py HOST PORT N"""
import errno, json, socket, sys

host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
outcomes = {}
for _ in range(n):
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
print(json.dumps(outcomes), flush=True)
