"""Test upstream resolver that tries to poison the agent's DNS forwarder.

For each query it first sends forged replies: one with another id, one with
the right id for another name, and one with the right id and name from
another port; then, 50 ms later, the real answer. Every forged reply says
FORGED_IP, the real one REAL_IP. Appends each query's source port to LOG.

usage: dns_spoofer.py ADDR PORT REAL_IP FORGED_IP LOG"""
import socket, struct, sys, time

addr, port, real, forged, log = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((addr, port))
other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
other.bind((addr, 0))


def question_of(query):
    """The question section (name, type, class) of a one-question query."""
    end = 12
    while query[end] != 0:
        end += 1 + query[end]
    return query[12:end + 5]


def name(text):
    return b"".join(bytes([len(l)]) + l.encode() for l in text.strip(".").split(".")) + b"\0"


def reply(qid, question, ip):
    header = struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0)
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(ip)
    return header + question + answer


print("LISTENING", flush=True)
while True:
    query, source = sock.recvfrom(512)
    qid = struct.unpack("!H", query[:2])[0]
    question = question_of(query)
    with open(log, "a") as f:
        f.write(f"{source[1]}\n")
    sock.sendto(reply((qid + 1) & 0xFFFF, question, forged), source)
    sock.sendto(reply(qid, name("forged.example.") + question[-4:], forged), source)
    other.sendto(reply(qid, question, forged), source)
    time.sleep(0.05)
    sock.sendto(reply(qid, question, real), source)
