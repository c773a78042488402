"""Test client: COUNT HTTP calls `GET PATH` to HOST:PORT, one after another,
each on a new connection (so each is a new pick of an instance), started
INTERVAL seconds apart, each bounded at 10 s. Prints one line per call:
`ok <body>` for a 200, else `fail <what>`.

usage: http_client.py HOST PORT COUNT INTERVAL [PATH]"""
import http.client, sys, time

host, port = sys.argv[1], int(sys.argv[2])
count, interval = int(sys.argv[3]), float(sys.argv[4])
path = sys.argv[5] if len(sys.argv) > 5 else "/"
for i in range(count):
    started = time.monotonic()
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        body = response.read().decode(errors="replace")
        if response.status == 200:
            print(f"ok {body}", flush=True)
        else:
            print(f"fail status {response.status}: {body}", flush=True)
    except Exception as e:
        print(f"fail {type(e).__name__}: {e}", flush=True)
    finally:
        conn.close()
    time.sleep(max(0.0, interval - (time.monotonic() - started)))
