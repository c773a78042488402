"""frontend: the internet-facing web app of the Consul Connect playground demo.

Registers users, logs them in and greets them, calling data-api (reached by
name through the mesh, e.g. http://data-api.mesh:5001) for everything. When
data-api cannot be reached (say the mesh denies it) every page that needs it
answers 502 "data-api is unreachable: <error>".

usage: python3 frontend.py --port 5000 --bind 0.0.0.0 --api http://data-api.mesh:5001
"""
import argparse
import html
import http.client
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TIMEOUT = 5
# Talk to data-api directly (through the mesh), never via a *_proxy env variable.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
FLASH = {"registered": "Registered! You can log in now."}
STYLE = ("body{font-family:sans-serif;max-width:32em;margin:2em auto}"
         "form{border:1px solid #ccc;padding:1em;margin:1em 0}"
         ".msg{color:#060}.err{color:#a00}")


class Unreachable(Exception):
    """data-api could not be reached (connection refused/denied/reset...)."""


def page(title, body):
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"{body}</body></html>")


def forms():
    out = ""
    for action, label in (("/register", "Register"), ("/login", "Log in")):
        out += (f"<form method='post' action='{action}'><h2>{label}</h2>"
                "<label>Username <input name='username'></label><br>"
                "<label>Password <input name='password' type='password'></label><br>"
                f"<button type='submit'>{label}</button></form>")
    return out


class Handler(BaseHTTPRequestHandler):
    server_version = "frontend/1.0"
    api = None  # base URL of data-api, set in main()

    def call_api(self, method, path, data=None):
        """Return (status, parsed JSON or None); raise Unreachable on network errors."""
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request(self.api + path, data=body, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with OPENER.open(req, timeout=TIMEOUT) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        except (urllib.error.URLError, OSError, ConnectionError,
                http.client.HTTPException) as e:
            reason = getattr(e, "reason", None) or e
            raise Unreachable(str(reason) or repr(reason)) from e
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, None

    def send_page(self, status, title, body, headers=()):
        data = page(title, body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def redirect(self, location, headers=()):
        self.send_response(303)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()

    def token(self):
        morsel = SimpleCookie(self.headers.get("Cookie", "")).get("session")
        return morsel.value if morsel and morsel.value else None

    def form(self):
        length = int(self.headers.get("Content-Length") or 0)
        fields = urllib.parse.parse_qs(self.rfile.read(length).decode(errors="replace"))
        return {k: fields.get(k, [""])[0] for k in ("username", "password")}

    def handle_route(self, method):
        try:
            route = getattr(self, f"{method}_{urllib.parse.urlsplit(self.path).path.strip('/')}", None)
            if route is None:
                return self.send_page(404, "Not found", "<p>No such page.</p>")
            route()
        except Unreachable as e:
            self.send_page(502, "Bad gateway", "<p class='err'>data-api is unreachable: "
                           f"{html.escape(str(e))}</p>")

    def do_GET(self):
        if urllib.parse.urlsplit(self.path).path == "/health":
            data = b"ok"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            return self.wfile.write(data)
        self.handle_route("get")

    def do_POST(self):
        self.handle_route("post")

    def get_(self):
        token = self.token()
        if token:
            status, data = self.call_api("GET", "/sessions/" + urllib.parse.quote(token, safe=""))
            if status == 200 and data:
                name = html.escape(data["username"])
                return self.send_page(200, f"Hello, {data['username']}!",
                                      f"<p>You are logged in as <b>{name}</b>.</p>"
                                      "<form method='post' action='/logout'>"
                                      "<button type='submit'>Log out</button></form>")
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        msg = FLASH.get(query.get("msg", [""])[0])
        flash = f"<p class='msg'>{html.escape(msg)}</p>" if msg else ""
        self.send_page(200, "Playground", flash + forms())

    def post_register(self):
        status, data = self.call_api("POST", "/users", self.form())
        if status == 201:
            return self.redirect("/?msg=registered")
        error = (data or {}).get("error", f"data-api said {status}")
        self.send_page(status if status in (400, 409) else 502, "Register failed",
                       f"<p class='err'>{html.escape(error)}</p>{forms()}")

    def post_login(self):
        status, data = self.call_api("POST", "/sessions", self.form())
        if status == 201 and data and data.get("token"):
            cookie = f"session={data['token']}; Path=/; HttpOnly; SameSite=Lax"
            return self.redirect("/", [("Set-Cookie", cookie)])
        error = (data or {}).get("error", f"data-api said {status}")
        self.send_page(status if status in (400, 401) else 502, "Log in failed",
                       f"<p class='err'>{html.escape(error)}</p>{forms()}")

    def post_logout(self):
        token = self.token()
        if token:
            self.call_api("DELETE", "/sessions/" + urllib.parse.quote(token, safe=""))
        cookie = "session=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"
        self.redirect("/", [("Set-Cookie", cookie)])

    def log_message(self, fmt, *args):
        sys.stderr.write("frontend %s %s\n" % (self.address_string(), fmt % args))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--api", default="http://data-api.mesh:5001")
    args = parser.parse_args()
    Handler.api = args.api.rstrip("/")
    server = ThreadingHTTPServer((args.bind, args.port), Handler)
    server.daemon_threads = True
    print(f"frontend listening on {args.bind}:{server.server_address[1]}, "
          f"data-api at {Handler.api}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
