"""`nsnet serve`: the node agent. Samples the node every --interval, keeps the dependency
edges it sees (in memory and, with --db, in SQLite), and serves them over HTTP: /metrics for
Prometheus, /api/v1/dependencies and /api/v1/snapshot as JSON, /healthz and /readyz.

Snapshots are taken on the main thread: entering a pinned namespace with setns is only safe
there (pinned.py). The HTTP server runs in its own thread and only reads the latest snapshot.
"""
from __future__ import annotations

import json
import signal
import threading
import time
from dataclasses import replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import views
from .edges import EdgeBook
from .history import deps_view, node_name
from .metrics import AgentMetrics
from .model import Snapshot
from .procfs import NsnetError
from .sampler import Sampler
from .sanitize import printable
from .services import ServiceMap
from .store import SampleRecord, Store, StoreError, parse_since
from .views import resolve_user

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
    """The latest snapshot, the edges and the sampler's health, shared with the HTTP threads."""

    def __init__(self, interval: float, expose_cmdlines: bool, node: str, book: EdgeBook,
                 services: ServiceMap):
        self.interval = interval
        self.expose_cmdlines = expose_cmdlines
        self.node = node
        self.book = book
        self.services = services
        self.lock = threading.Lock()
        self.snapshot: Optional[Snapshot] = None
        self.last_sample_end = time.monotonic()
        self.last_error: Optional[str] = None
        self.history: str = "memory only (no --db)"
        self.samples = 0
        self.stop = threading.Event()
        self.metrics: Optional["AgentMetrics"] = None

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

    def dependencies(self, since: Optional[float], uid: Optional[int]) -> dict:
        with self.lock:
            rows = [(self.node, k, replace(s)) for k, s in self.book.since(since or 0.0)
                    if uid is None or k.uid == uid]
        return deps_view(rows, self.services, since, "agent")


def _handler(agent: Agent) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "nsnet"

        def log_message(self, fmt: str, *args: Any) -> None:
            pass   # probes every few seconds would drown the agent's own messages

        def _send_bytes(self, status: HTTPStatus, data: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _send(self, status: HTTPStatus, body: dict) -> None:
            self._send_bytes(status, (json.dumps(body, ensure_ascii=True) + "\n").encode(),
                             "application/json")

        def do_GET(self) -> None:   # noqa: N802 (http.server's naming)
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            if url.path == "/healthz":
                ok = agent.alive()
                self._send(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE,
                           {"status": "ok" if ok else "sampler stalled"})
            elif url.path == "/readyz":
                ready = agent.snapshot is not None
                self._send(HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE,
                           {"status": "ready" if ready else "no sample yet",
                            "samples": agent.samples, "last_error": agent.last_error,
                            "history": agent.history})
            elif url.path == "/metrics" and agent.metrics is not None:
                self._send_bytes(HTTPStatus.OK, generate_latest(agent.metrics.registry),
                                 CONTENT_TYPE_LATEST)
            elif url.path == "/api/v1/snapshot":
                view = query.get("view", ["sockets"])[0]
                if view not in VIEWS:
                    self._send(HTTPStatus.BAD_REQUEST,
                               {"error": f"unknown view; one of {', '.join(VIEWS)}"})
                    return
                doc = agent.document(view)
                if doc is None:
                    self._send(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "no sample yet"})
                else:
                    self._send(HTTPStatus.OK, doc)
            elif url.path == "/api/v1/dependencies":
                try:
                    since = parse_since(query["since"][0]) if "since" in query else None
                    uid = resolve_user(query["user"][0]) if "user" in query else None
                except ValueError as exc:
                    self._send(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
                    return
                self._send(HTTPStatus.OK, agent.dependencies(since, uid))
            else:
                self._send(HTTPStatus.NOT_FOUND, {"error": "not found", "paths": [
                    "/healthz", "/readyz", "/metrics", "/api/v1/dependencies?since=24h&user=U",
                    "/api/v1/snapshot?view=" + "|".join(VIEWS)]})

    return Handler


def _open_store(args, err) -> tuple[Optional[Store], str]:
    """The history, or None: an unusable --db is said once and the agent runs on in memory,
    rather than exiting into a crash loop that would hide the reason in restarts."""
    if not args.db:
        return None, "memory only (no --db)"
    try:
        return Store(args.db, retention=args.retention), f"sqlite {args.db}"
    except StoreError as exc:
        err.write(f"nsnet: warning: {printable(str(exc))}; keeping history in memory only\n")
        return None, f"memory only: {exc}"


def serve(args, services: ServiceMap, err) -> int:
    node = node_name(args.node_name)
    book = EdgeBook(args.retention)
    agent = Agent(args.interval, args.expose_cmdlines, node, book, services)
    metrics = agent.metrics = AgentMetrics(node, lambda: book, services, args.max_series)
    store, agent.history = _open_store(args, err)
    if store is not None:
        book.load(store.edges(since=time.time() - args.retention, node=node))
    host, port = args.listen
    try:
        server = ThreadingHTTPServer((host, port), _handler(agent))
    except OSError as exc:
        raise NsnetError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    server.daemon_threads = True
    http_thread = threading.Thread(target=server.serve_forever, name="nsnet-http", daemon=True)
    http_thread.start()
    # SIGTERM (pod deletion): finish the current sample, commit it, then leave with status 0.
    previous = signal.signal(signal.SIGTERM, lambda *_: agent.stop.set())
    err.write(f"nsnet: serving on {host}:{server.server_address[1]}, "
              f"a sample every {args.interval:g} s, history: {agent.history}\n")
    err.flush()
    said: set[str] = set()

    def say_once(line: str) -> None:
        if line not in said:   # once each, not every interval
            said.add(line)
            err.write(f"nsnet: warning: {printable(line)}\n")

    sampler = Sampler(args, services, say_once, hurry=agent.stop)
    try:
        while not agent.stop.is_set():
            try:
                sample = sampler.sample()
            except NsnetError as exc:
                agent.record(None, str(exc))
                metrics.sample_failures.inc()
                err.write(f"nsnet: sample failed: {printable(str(exc))}\n")
                err.flush()
                agent.stop.wait(args.interval)
                continue
            snap = sample.snap
            with agent.lock:
                book.update(sample.observed, sample.ts)
            if store is not None:
                try:
                    store.record(node, sample.observed, SampleRecord(
                        sample.ts, sample.wall, sample.cpu, snap.stats.namespaces,
                        snap.stats.sockets, sample.over_budget))
                except StoreError as exc:
                    metrics.store_errors.inc()
                    say_once(f"{exc} (the agent goes on; history since then is in memory only)")
            metrics.observe_sample(snap, sample.wall, sample.cpu, sample.over_budget)
            metrics.events.inc(sample.closed)
            if sampler.watcher is not None:
                metrics.events_dropped.set(sampler.watcher.dropped)
                metrics.namespaces_watched.set(len(sampler.watcher.watched()))
            agent.record(snap, None)
            err.flush()
            agent.stop.wait(sampler.wait_after(sample))
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.shutdown()
        server.server_close()
        sampler.close()
        if store is not None:
            store.close()
    return 0
