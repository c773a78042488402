"""Test client: holds a connection to an echo server open, sending a byte
every 50 ms. Prints "OPEN" once connected and, when the connection breaks,
"CLOSED <unix time>", then exits. Gives up after SECONDS.

usage: hold_client.py HOST PORT SECONDS"""
import socket, sys, time

host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.create_connection((host, port), timeout=5)
s.sendall(b"x")
s.recv(1)
print("OPEN", flush=True)
s.settimeout(0.05)
deadline = time.time() + seconds
while time.time() < deadline:
    try:
        s.sendall(b"x")
        if not s.recv(1):
            break
    except socket.timeout:
        continue
    except OSError:
        break
    time.sleep(0.05)
else:
    print("STILL OPEN", flush=True)
    sys.exit(1)
print(f"CLOSED {time.time():.3f}", flush=True)
