"""A stand-in for an existing microservice: POST /confirm confirms an order."""
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Orders(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path != "/confirm":
            self.send_error(404)
            return
        try:
            order = json.loads(body)
        except ValueError:
            self.send_error(400, "not JSON")
            return
        answer = json.dumps({"confirmed": order.get("order"), "job": self.headers.get("X-Warren-Job-Id")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8000"))), Orders).serve_forever()
