"""data-api: the REST back end of the Consul Connect playground demo.

Keeps users (salted PBKDF2-HMAC-SHA256 password hashes) and login sessions
in an sqlite database and speaks JSON. Binds 127.0.0.1 only: other services
reach it through the mesh.

usage: python3 data_api.py --port 5001 --db PATH
"""
import argparse
import hashlib
import hmac
import json
import re
import secrets
import sqlite3
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ITERATIONS = 20_000
USERNAME_RE = re.compile(r"[a-zA-Z0-9_-]{1,32}")
SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    username TEXT PRIMARY KEY, salt TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    token TEXT PRIMARY KEY, username TEXT NOT NULL REFERENCES users(username));
"""


def hash_password(password, salt):
    return hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt),
                               ITERATIONS).hex()


class Store:
    """All database access, serialised by one lock (sqlite + threads)."""

    def __init__(self, path):
        self.db = sqlite3.connect(path, check_same_thread=False)
        self.db.executescript(SCHEMA)
        self.lock = threading.Lock()

    def add_user(self, username, password):
        salt = secrets.token_hex(16)
        with self.lock, self.db:
            try:
                self.db.execute("INSERT INTO users VALUES (?, ?, ?)",
                                (username, salt, hash_password(password, salt)))
                return True
            except sqlite3.IntegrityError:
                return False

    def login(self, username, password):
        with self.lock:
            row = self.db.execute("SELECT salt, hash FROM users WHERE username = ?",
                                  (username,)).fetchone()
        if row is None or not hmac.compare_digest(hash_password(password, row[0]), row[1]):
            return None
        token = secrets.token_hex(16)
        with self.lock, self.db:
            self.db.execute("INSERT INTO sessions VALUES (?, ?)", (token, username))
        return token

    def session_user(self, token):
        with self.lock:
            row = self.db.execute("SELECT username FROM sessions WHERE token = ?",
                                  (token,)).fetchone()
        return row[0] if row else None

    def logout(self, token):
        with self.lock, self.db:
            self.db.execute("DELETE FROM sessions WHERE token = ?", (token,))


class Handler(BaseHTTPRequestHandler):
    server_version = "data-api/1.0"
    store = None  # set in main()

    def send_json(self, status, obj=None):
        body = b"" if obj is None else json.dumps(obj).encode()
        self.send_response(status)
        if obj is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def read_credentials(self):
        """Return (username, password) from the JSON body, or None if invalid."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
            data = json.loads(self.rfile.read(length) or b"{}")
            username, password = data["username"], data["password"]
        except (ValueError, KeyError, TypeError):
            return None
        if not isinstance(username, str) or not isinstance(password, str):
            return None
        return username, password

    def do_GET(self):
        if self.path == "/health":
            self.send_json(200, {"ok": True})
        elif self.path == "/admin/list_all":
            self.send_json(403, {"error": "admin only"})
        elif self.path.startswith("/sessions/"):
            user = self.store.session_user(self.path[len("/sessions/"):])
            if user:
                self.send_json(200, {"username": user})
            else:
                self.send_json(404, {"error": "no such session"})
        else:
            self.send_json(404, {"error": "not found"})

    def do_POST(self):
        if self.path not in ("/users", "/sessions"):
            return self.send_json(404, {"error": "not found"})
        creds = self.read_credentials()
        if creds is None:
            return self.send_json(400, {"error": "expected JSON {username, password}"})
        username, password = creds
        if self.path == "/users":
            if not USERNAME_RE.fullmatch(username):
                return self.send_json(400, {"error": "username must be 1-32 of [a-zA-Z0-9_-]"})
            if len(password) < 4:
                return self.send_json(400, {"error": "password must be at least 4 characters"})
            if not self.store.add_user(username, password):
                return self.send_json(409, {"error": "user exists"})
            return self.send_json(201, {"username": username})
        token = self.store.login(username, password)
        if token is None:
            return self.send_json(401, {"error": "bad credentials"})
        self.send_json(201, {"token": token})

    def do_DELETE(self):
        if self.path.startswith("/sessions/"):
            self.store.logout(self.path[len("/sessions/"):])
            self.send_json(204)
        else:
            self.send_json(404, {"error": "not found"})

    def log_message(self, fmt, *args):
        sys.stderr.write("data-api %s %s\n" % (self.address_string(), fmt % args))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--db", default="data-api.db")
    args = parser.parse_args()
    Handler.store = Store(args.db)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"data-api listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
