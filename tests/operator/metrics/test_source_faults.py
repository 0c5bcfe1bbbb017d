"""Broken metrics endpoints, served for real over HTTP on 127.0.0.1: a Prometheus or a trainer /metrics that
answers garbage, not-Prometheus JSON, a huge body, or nothing at all. Every one must be MetricsUnavailableError
(an unknown verdict, never a stop, never an exception that ends the early-stopping cycle for other jobs), within
the timeout, with bounded memory."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from finetune_operator.metrics.source import MAX_BODY_BYTES, MetricsUnavailableError, PrometheusSource, ScrapeSource

Answer = Callable[[BaseHTTPRequestHandler], None]


def body(content: bytes, content_type: str = "text/plain") -> Answer:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(content)))
        handler.end_headers()
        handler.wfile.write(content)

    return answer


def endless(handler: BaseHTTPRequestHandler) -> None:
    """A body that never ends (no length): 1 MiB chunks until the client hangs up."""
    handler.send_response(200)
    handler.end_headers()
    chunk = b"finetune_train_loss 1.0\n" * (1024 * 1024 // 24)
    try:
        for _ in range(4 * MAX_BODY_BYTES // len(chunk)):
            handler.wfile.write(chunk)
    except OSError:
        return


def dripping(handler: BaseHTTPRequestHandler) -> None:
    """A valid /metrics page trickled a few bytes every 0.1 s (under any read timeout), for 10 s in all."""
    page = b"finetune_train_loss 1.0\n" * 200
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(page)))
    handler.end_headers()
    try:
        for start in range(0, len(page), 48):
            handler.wfile.write(page[start : start + 48])
            handler.wfile.flush()
            time.sleep(0.1)
    except OSError:
        return


def silent(handler: BaseHTTPRequestHandler) -> None:
    """Accepts the request and never answers."""
    time.sleep(5)


@pytest.fixture
def serve() -> Iterator[Callable[[Answer], str]]:
    servers: list[ThreadingHTTPServer] = []

    def start(answer: Answer) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                answer(self)

            def log_message(self, *args: object) -> None:
                return

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


GARBAGE: dict[str, Answer] = {
    "binary": body(bytes(range(256)) * 64, "application/octet-stream"),
    "html": body(b"<html><body>502 Bad Gateway</body></html>", "text/html"),
    "json-not-prometheus": body(b'{"status": "success", "data": {"result": [{"values": "nope"}]}}', "application/json"),
    "json-list": body(b"[1, 2, 3]", "application/json"),
    "json-no-data": body(b'{"status": "success"}', "application/json"),
    "huge": endless,
}


@pytest.mark.parametrize("case", sorted(GARBAGE))
def test_prometheus_answering_garbage_is_unavailable(serve: Callable[[Answer], str], case: str) -> None:
    source = PrometheusSource(serve(GARBAGE[case]), timeout_seconds=5)
    with pytest.raises(MetricsUnavailableError, match="Prometheus"):
        source.fetch("ns", "job")


@pytest.mark.parametrize("case", ["binary", "html", "huge"])
def test_a_trainer_endpoint_answering_garbage_is_unavailable(serve: Callable[[Answer], str], case: str) -> None:
    with pytest.raises(MetricsUnavailableError):
        ScrapeSource(timeout_seconds=5).fetch("ns", "job", serve(GARBAGE[case]) + "/metrics")


def test_a_huge_answer_is_refused_after_the_limit_not_read_whole(serve: Callable[[Answer], str]) -> None:
    with pytest.raises(MetricsUnavailableError, match=f"more than {MAX_BODY_BYTES:,} bytes"):
        ScrapeSource(timeout_seconds=5).fetch("ns", "job", serve(endless) + "/metrics")


def fetcher(kind: str, url: str) -> Callable[[], object]:
    """One fetch through Prometheus or a direct scrape, with a 0.5 s timeout."""
    if kind == "prometheus":
        return lambda: PrometheusSource(url, timeout_seconds=0.5).fetch("ns", "job")
    return lambda: ScrapeSource(timeout_seconds=0.5).fetch("ns", "job", url + "/metrics")


@pytest.mark.parametrize("kind", ["prometheus", "scrape"])
def test_an_endpoint_that_never_answers_times_out(serve: Callable[[Answer], str], kind: str) -> None:
    fetch = fetcher(kind, serve(silent))
    started = time.monotonic()
    with pytest.raises(MetricsUnavailableError, match="timed out"):
        fetch()
    assert time.monotonic() - started < 4


@pytest.mark.parametrize("kind", ["prometheus", "scrape"])
def test_an_endpoint_that_trickles_is_cut_off_at_the_total_deadline(serve: Callable[[Answer], str], kind: str) -> None:
    """Each read gets bytes within the 0.5 s timeout; the answer as a whole would take 10 s."""
    fetch = fetcher(kind, serve(dripping))
    started = time.monotonic()
    with pytest.raises(MetricsUnavailableError, match="answered too slowly"):
        fetch()
    assert time.monotonic() - started < 4


def test_a_closed_port_is_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(MetricsUnavailableError):
        PrometheusSource(f"http://127.0.0.1:{port}", timeout_seconds=1).fetch("ns", "job")
