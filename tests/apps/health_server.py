"""Test service with a health endpoint: an HTTP server on 127.0.0.1:PORT.
`GET /health` answers the status code written in STATE_FILE, read at each
request (200 if the file is missing or empty); any other GET answers 200
with body NAME, so a caller knows which instance answered. Logs nothing.

usage: health_server.py PORT STATE_FILE NAME"""
import http.server, socketserver, sys

port, state_file, name = int(sys.argv[1]), sys.argv[2], sys.argv[3]


def health_status():
    try:
        with open(state_file) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return 200
    return int(text) if text else 200


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            status = health_status()
            body = f"{name} health {status}".encode()
        else:
            status, body = 200, name.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self):
        # HTTPServer's own asks the resolver for the host's name, which
        # inside a node is the agent's DNS: not needed, so not asked.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


Server(("127.0.0.1", port), Handler).serve_forever()
