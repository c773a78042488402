"""Test service: echoes every connection's bytes back until EOF, then
closes. Appends one line per accepted connection to LOG. Listens on
127.0.0.1, or on BIND (e.g. 0.0.0.0, as a careless service would).

usage: echo_server.py PORT LOG [BIND]"""
import socket, sys, threading

port, log = int(sys.argv[1]), sys.argv[2]
bind = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"

def serve(conn):
    with conn:
        while True:
            chunk = conn.recv(1 << 16)
            if not chunk:
                break
            conn.sendall(chunk)

srv = socket.create_server((bind, port), backlog=64)
while True:
    conn, peer = srv.accept()
    with open(log, "a") as f:
        f.write(f"accept {peer[0]}\n")
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
