"""A second newcomer's findings on `hv metrics URL` pointed at something that is not a Prometheus endpoint.

The usual slip: the application's own web port, or `/` instead of `/metrics`. The page is read, then handed to the
Prometheus text parser, whose ValueError comes out as a traceback.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from hvcore.cli import main


class _HtmlPage(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!DOCTYPE html><html><body>my web app</body></html>\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def html_url() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _HtmlPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_hv_metrics_on_a_web_page_is_one_error_line(html_url: str) -> None:
    assert main(["metrics", html_url], io.StringIO()) == 2
