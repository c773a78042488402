"""End-to-end test of the playground apps (data_api.py + frontend.py), no mesh.

Starts data-api on a free port with a temporary sqlite db and frontend pointing
at it over plain http://127.0.0.1, then walks through the demo: register, log
in, log out, the refusing admin endpoint, and finally data-api going away
(frontend must answer 502 "data-api is unreachable").

usage: cd tests/apps/playground && python3 -m unittest test_playground -v
"""
import http.cookiejar
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
START_TIMEOUT = 10


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(opener, url, form=None, method=None):
    """Return (status, body text, response headers); HTTP errors are not raised."""
    data = None if form is None else urllib.parse.urlencode(form).encode()
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with opener.open(req, timeout=10) as resp:
            return resp.status, resp.read().decode(), resp.headers
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read().decode(), e.headers


class PlaygroundTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.procs = {}
        self.api_port, self.web_port = free_port(), free_port()
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.web = f"http://127.0.0.1:{self.web_port}"
        self.jar = http.cookiejar.CookieJar()
        self.browser = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPCookieProcessor(self.jar))
        self.plain = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self.start("data-api", "data_api.py", "--port", str(self.api_port),
                   "--db", os.path.join(self.tmp.name, "data-api.db"))
        self.start("frontend", "frontend.py", "--port", str(self.web_port),
                   "--bind", "127.0.0.1", "--api", self.api)
        self.wait_healthy("data-api", self.api + "/health")
        self.wait_healthy("frontend", self.web + "/health")

    def tearDown(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=5)
            proc.stdout.close()
        self.tmp.cleanup()

    def start(self, name, script, *args):
        log = open(os.path.join(self.tmp.name, name + ".log"), "w")
        with log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, os.path.join(HERE, script), *args],
                stdout=subprocess.PIPE, stderr=log, text=True)

    def wait_healthy(self, name, url):
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            self.assertIsNone(self.procs[name].poll(), f"{name} exited early")
            try:
                with self.plain.open(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        self.fail(f"{name} not healthy within {START_TIMEOUT}s")

    def session_cookie(self):
        return next((c.value for c in self.jar if c.name == "session"), None)

    def test_health_and_banners(self):
        status, body, _ = fetch(self.plain, self.web + "/health")
        self.assertEqual((status, body), (200, "ok"))
        status, body, _ = fetch(self.plain, self.api + "/health")
        self.assertEqual((status, json.loads(body)), (200, {"ok": True}))
        self.assertEqual(self.procs["data-api"].stdout.readline().strip(),
                         f"data-api listening on 127.0.0.1:{self.api_port}")
        self.assertEqual(self.procs["frontend"].stdout.readline().strip(),
                         f"frontend listening on 127.0.0.1:{self.web_port}, "
                         f"data-api at {self.api}")
        status, body, _ = fetch(self.plain, self.api + "/nope")
        self.assertEqual(status, 404)
        self.assertIn("error", json.loads(body))

    def test_demo_flow(self):
        alice = {"username": "alice", "password": "JunePanda"}

        status, body, _ = fetch(self.browser, self.web + "/")
        self.assertEqual(status, 200)
        self.assertIn("action='/register'", body)
        self.assertIn("action='/login'", body)

        status, body, _ = fetch(self.browser, self.web + "/register", alice)
        self.assertEqual(status, 200)  # after the 303 to /?msg=registered
        self.assertIn("Registered!", body)

        status, body, _ = fetch(self.browser, self.web + "/register", alice)
        self.assertEqual(status, 409)
        self.assertIn("user exists", body)

        status, body, _ = fetch(self.browser, self.web + "/register",
                                {"username": "bad name!", "password": "x"})
        self.assertEqual(status, 400)

        status, body, _ = fetch(self.browser, self.web + "/login",
                                {"username": "alice", "password": "wrong"})
        self.assertEqual(status, 401)
        self.assertIn("bad credentials", body)
        self.assertIsNone(self.session_cookie())

        status, body, _ = fetch(self.browser, self.web + "/login", alice)
        self.assertEqual(status, 200)
        self.assertIn("Hello, alice!", body)
        token = self.session_cookie()
        self.assertRegex(token or "", r"^[0-9a-f]{32}$")
        status, body, _ = fetch(self.plain, f"{self.api}/sessions/{token}")
        self.assertEqual((status, json.loads(body)), (200, {"username": "alice"}))

        status, body, _ = fetch(self.browser, self.web + "/logout", {})
        self.assertEqual(status, 200)
        self.assertNotIn("Hello, alice!", body)
        self.assertIn("action='/login'", body)
        self.assertIsNone(self.session_cookie())
        status, _, _ = fetch(self.plain, f"{self.api}/sessions/{token}")
        self.assertEqual(status, 404)

        status, body, _ = fetch(self.plain, self.api + "/admin/list_all")
        self.assertEqual((status, json.loads(body)), (403, {"error": "admin only"}))

        # Log in again, then take data-api away: the frontend must say so.
        status, body, _ = fetch(self.browser, self.web + "/login", alice)
        self.assertIn("Hello, alice!", body)
        api = self.procs["data-api"]
        api.kill()
        api.wait(timeout=5)
        status, body, _ = fetch(self.browser, self.web + "/")
        self.assertEqual(status, 502)
        self.assertIn("data-api is unreachable", body)
        status, body, _ = fetch(self.browser, self.web + "/login", alice)
        self.assertEqual(status, 502)
        self.assertIn("data-api is unreachable", body)
        status, body, _ = fetch(self.plain, self.web + "/health")
        self.assertEqual((status, body), (200, "ok"))


if __name__ == "__main__":
    unittest.main()
