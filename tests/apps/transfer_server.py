"""Test service: for each connection, reads until EOF (the client's
half-close), answers "<count> <sha256>\n" of what it read, then sends
NBYTES of seeded data and closes. Appends one line per accepted connection
to LOG, so a test can prove that nothing reached the service. Listens on
127.0.0.1 unless BIND is given ("::" means dual-stack, any address).

usage: transfer_server.py PORT NBYTES LOG [BIND]"""
import hashlib, random, socket, sys, threading

port, nbytes, log = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
payload = random.Random(2).randbytes(nbytes)

def serve(conn):
    with conn:
        h, count = hashlib.sha256(), 0
        while True:
            chunk = conn.recv(1 << 16)
            if not chunk:
                break
            h.update(chunk)
            count += len(chunk)
        conn.sendall(f"{count} {h.hexdigest()}\n".encode() + payload)

bind = sys.argv[4] if len(sys.argv) > 4 else "127.0.0.1"
if ":" in bind:
    srv = socket.create_server((bind, port), family=socket.AF_INET6, backlog=64,
                               reuse_port=False, dualstack_ipv6=(bind == "::"))
else:
    srv = socket.create_server((bind, port), backlog=64)
while True:
    conn, peer = srv.accept()
    with open(log, "a") as f:
        f.write(f"accept {peer[0]}\n")
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
