"""The demo's application: answers /health with 200 when its database answers through
pgbouncer, 503 when it does not. Speaks just enough of the PostgreSQL protocol to log in
(trust authentication) and run `SELECT 1`, so it needs nothing beyond Python."""

import os
import socket
import struct
from http.server import BaseHTTPRequestHandler, HTTPServer

HOST = os.environ.get("DB_HOST", "pgbouncer")
PORT = int(os.environ.get("DB_PORT", "6432"))
USER = os.environ.get("DB_USER", "postgres")
DATABASE = os.environ.get("DB_NAME", "shop")


def message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def database_answers() -> bool:
    params = b"user\0" + USER.encode() + b"\0database\0" + DATABASE.encode() + b"\0\0"
    startup = struct.pack("!II", len(params) + 8, 196608) + params
    try:
        with socket.create_connection((HOST, PORT), timeout=3) as conn:
            conn.sendall(startup)
            conn.sendall(message(b"Q", b"SELECT 1\0"))
            seen = b""
            while b"Z" not in seen[-6:]:
                chunk = conn.recv(4096)
                if not chunk:
                    return False
                seen += chunk
                if seen[:1] == b"E":
                    return False
            return b"D" in seen and b"E" not in seen[:1]
    except OSError:
        return False


class Health(BaseHTTPRequestHandler):
    def do_GET(self):
        healthy = self.path == "/health" and database_answers()
        self.send_response(200 if healthy else 503)
        self.end_headers()
        self.wfile.write(b"ok\n" if healthy else b"database unreachable\n")

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    HTTPServer(("0.0.0.0", 8080), Health).serve_forever()
