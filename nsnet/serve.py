"""`nsnet serve`: the node agent. Samples the node every --interval and serves the latest
snapshot as JSON over HTTP (/api/v1/snapshot), with /healthz and /readyz for the kubelet.

Snapshots are taken on the main thread: entering a pinned namespace with setns is only safe
there (pinned.py). The HTTP server runs in its own thread and only reads the latest snapshot.
"""
from __future__ import annotations

import json
import signal
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional
from urllib.parse import parse_qs, urlsplit

from . import sockdiag, views
from .model import Snapshot
from .procfs import NsnetError
from .sanitize import printable

VIEWS: dict[str, Callable[[Snapshot], dict]] = {
    "sockets": views.sockets_view,
    "by-namespace": views.by_namespace_view,
    "by-user": views.by_user_view,
    "by-pod": views.by_pod_view,
}


def without_cmdlines(doc: Any) -> Any:
    """The endpoint is reachable by whoever can reach the pod network, and it sees every
    tenant's processes: command lines (which may carry secrets) are blanked unless asked."""
    if isinstance(doc, dict):
        return {k: ([] if k == "cmdline" else without_cmdlines(v)) for k, v in doc.items()}
    if isinstance(doc, list):
        return [without_cmdlines(v) for v in doc]
    return doc


class Agent:
    """The latest snapshot and the sampler's health, shared with the HTTP threads."""

    def __init__(self, interval: float, expose_cmdlines: bool):
        self.interval = interval
        self.expose_cmdlines = expose_cmdlines
        self.lock = threading.Lock()
        self.snapshot: Optional[Snapshot] = None
        self.last_sample_end = time.monotonic()
        self.last_error: Optional[str] = None
        self.samples = 0
        self.stop = threading.Event()

    def record(self, snap: Optional[Snapshot], error: Optional[str]) -> None:
        with self.lock:
            if snap is not None:
                self.snapshot = snap
                self.samples += 1
            self.last_error = error
            self.last_sample_end = time.monotonic()

    def alive(self) -> bool:
        # The sampler is stuck when no sample ended within a few intervals (a snapshot of a
        # busy node takes seconds, not minutes).
        return time.monotonic() - self.last_sample_end < 3 * self.interval + 120

    def document(self, view: str) -> Optional[dict]:
        with self.lock:
            snap = self.snapshot
        if snap is None:
            return None
        doc = VIEWS[view](snap)
        return doc if self.expose_cmdlines else without_cmdlines(doc)


def _handler(agent: Agent) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "nsnet"

        def log_message(self, fmt: str, *args: Any) -> None:
            pass   # probes every few seconds would drown the agent's own messages

        def _send(self, status: HTTPStatus, body: dict) -> None:
            data = (json.dumps(body, ensure_ascii=True) + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:   # noqa: N802 (http.server's naming)
            url = urlsplit(self.path)
            if url.path == "/healthz":
                ok = agent.alive()
                self._send(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE,
                           {"status": "ok" if ok else "sampler stalled"})
            elif url.path == "/readyz":
                ready = agent.snapshot is not None
                self._send(HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE,
                           {"status": "ready" if ready else "no sample yet",
                            "samples": agent.samples, "last_error": agent.last_error})
            elif url.path == "/api/v1/snapshot":
                view = parse_qs(url.query).get("view", ["sockets"])[0]
                if view not in VIEWS:
                    self._send(HTTPStatus.BAD_REQUEST,
                               {"error": f"unknown view; one of {', '.join(VIEWS)}"})
                    return
                doc = agent.document(view)
                if doc is None:
                    self._send(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "no sample yet"})
                else:
                    self._send(HTTPStatus.OK, doc)
            else:
                self._send(HTTPStatus.NOT_FOUND, {"error": "not found", "paths": [
                    "/healthz", "/readyz", "/api/v1/snapshot?view=" + "|".join(VIEWS)]})

    return Handler


def serve(args, services, err) -> int:
    from .snapshot import take_snapshot

    agent = Agent(args.interval, args.expose_cmdlines)
    host, port = args.listen
    try:
        server = ThreadingHTTPServer((host, port), _handler(agent))
    except OSError as exc:
        raise NsnetError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    server.daemon_threads = True
    http_thread = threading.Thread(target=server.serve_forever, name="nsnet-http", daemon=True)
    http_thread.start()
    # SIGTERM (pod deletion): finish the current sample, then leave with status 0.
    previous = signal.signal(signal.SIGTERM, lambda *_: agent.stop.set())
    diag = sockdiag.DiagSockets()
    err.write(f"nsnet: serving on {host}:{server.server_address[1]}, "
              f"a sample every {args.interval:g} s\n")
    err.flush()
    seen_warnings: set[str] = set()
    try:
        while not agent.stop.is_set():
            begun = time.monotonic()
            try:
                snap = take_snapshot(args.proc,
                                     sandbox_commands=args.sandbox_command or ("pause",),
                                     enter_pinned=not args.no_enter, source=args.source,
                                     diag_sockets=diag, host_root=args.host_root)
                snap.services = services
                agent.record(snap, None)
                for line in snap.stats.warnings():
                    if line not in seen_warnings:   # once each, not every interval
                        seen_warnings.add(line)
                        err.write(f"nsnet: warning: {printable(line)}\n")
            except NsnetError as exc:
                agent.record(None, str(exc))
                err.write(f"nsnet: sample failed: {printable(str(exc))}\n")
            err.flush()
            agent.stop.wait(max(0.0, args.interval - (time.monotonic() - begun)))
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.shutdown()
        server.server_close()
        diag.close()
    return 0
