"""Test client: sends TEXT to HOST:PORT, half-closes, prints what came back.

usage: echo_client.py HOST PORT TEXT"""
import socket, sys

host, port, text = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
s = socket.create_connection((host, port), timeout=30)
s.sendall(text)
s.shutdown(socket.SHUT_WR)
data = bytearray()
while True:
    chunk = s.recv(1 << 16)
    if not chunk:
        break
    data += chunk
sys.stdout.write(data.decode(errors="replace"))
