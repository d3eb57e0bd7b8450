"""Counts hits in /data/hits (a named volume), so the count outlives the container."""

import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HITS = Path("/data/hits")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        hits = int(HITS.read_text()) if HITS.exists() else 0
        if self.path == "/hit":
            hits += 1
            HITS.write_text(str(hits))
        body = f"{os.environ.get('GREETING', '')} hits={hits}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        print(self.address_string(), self.requestline, flush=True)


ThreadingHTTPServer(("0.0.0.0", 8000), Handler).serve_forever()
