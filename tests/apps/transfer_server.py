"""Test service: for each connection, reads until EOF (the client's
half-close), answers "<count> <sha256>\n" of what it read, then sends
NBYTES of seeded data and closes. Appends one line per accepted connection
to LOG, so a test can prove that nothing reached the service."""
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

srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(64)
while True:
    conn, peer = srv.accept()
    with open(log, "a") as f:
        f.write(f"accept {peer[0]}\n")
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
