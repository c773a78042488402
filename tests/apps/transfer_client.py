"""Test client: sends NBYTES of seeded data to HOST:PORT, shuts down its
write side, then expects the server's count+hash line and NBYTES of the
server's seeded data. Prints OK, MISMATCH or ERRNO <n>; exit 0 only on OK.
With SECONDS, the upload is spread over that long (100 paced chunks).

usage: transfer_client.py HOST PORT NBYTES [SECONDS]"""
import hashlib, random, socket, sys, time

host, port, nbytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
sent = random.Random(1).randbytes(nbytes)
try:
    s = socket.create_connection((host, port), timeout=30)
    if seconds > 0:
        step = max(1, nbytes // 100)
        for i in range(0, nbytes, step):
            s.sendall(sent[i:i + step])
            time.sleep(seconds / 100)
    else:
        s.sendall(sent)
    s.shutdown(socket.SHUT_WR)
    data = bytearray()
    while True:
        chunk = s.recv(1 << 16)
        if not chunk:
            break
        data += chunk
except OSError as e:
    print(f"ERRNO {e.errno} {e}")
    sys.exit(2)
line, _, rest = bytes(data).partition(b"\n")
want_line = f"{nbytes} {hashlib.sha256(sent).hexdigest()}".encode()
if line != want_line:
    print(f"MISMATCH server saw {line!r}, want {want_line!r}")
    sys.exit(1)
if rest != random.Random(2).randbytes(nbytes):
    print(f"MISMATCH received {len(rest)} bytes, want {nbytes} seeded bytes")
    sys.exit(1)
print(f"OK sent={nbytes} received={len(rest)}")
