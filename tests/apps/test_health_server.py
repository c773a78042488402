"""Tests of health_server.py over plain HTTP (no mesh)."""
import os, socket, subprocess, sys, tempfile, time, unittest, urllib.error, urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HealthServerTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.state = os.path.join(self.dir.name, "state")
        self.port = free_port()
        self.server = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "health_server.py"), str(self.port), self.state, "b1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                self.assertLess(time.monotonic(), deadline, "the server did not listen")
                time.sleep(0.05)

    def tearDown(self):
        self.server.kill()
        out, err = self.server.communicate()
        self.assertEqual((out, err), (b"", b""), "the server printed something")
        self.dir.cleanup()

    def get(self, path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def test_health_follows_the_state_file_and_other_paths_name_the_instance(self):
        self.assertEqual(self.get("/health"), (200, "b1 health 200"))
        for code in (503, 429, 200):
            with open(self.state, "w") as f:
                f.write(f"{code}\n")
            self.assertEqual(self.get("/health"), (code, f"b1 health {code}"))
            self.assertEqual(self.get("/"), (200, "b1"))
        open(self.state, "w").close()
        self.assertEqual(self.get("/health"), (200, "b1 health 200"))


if __name__ == "__main__":
    unittest.main()
