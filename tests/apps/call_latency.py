"""Test client: N calls to an echo service at HOST:PORT, one after another:
connect, send a line, read it back, close. Prints one line per call: the
milliseconds it took, or `ERR <what>`.

usage: call_latency.py HOST PORT N"""
import socket, sys, time

host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for _ in range(n):
    started = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(b"ping\n")
            got = b""
            while len(got) < 5:
                chunk = s.recv(16)
                if not chunk:
                    break
                got += chunk
        if got != b"ping\n":
            print(f"ERR echo {got!r}", flush=True)
            continue
        print(f"{(time.monotonic() - started) * 1000:.3f}", flush=True)
    except OSError as e:
        print(f"ERR {e}", flush=True)
    time.sleep(0.02)
