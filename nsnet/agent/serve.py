"""`nsnet serve`: the node agent. Samples the node every interval, keeps the dependency edges
it sees (in memory and, with a history database, in SQLite), and serves them over HTTP:
/metrics for Prometheus, /api/v1/dependencies and /api/v1/snapshot as JSON, /healthz and
/readyz; with --auth-token-file, all but the probes only to a bearer of the token (auth.py).

Snapshots are taken on the main thread: entering a namespace with setns is only safe there
(nsnet.setns) -- each in a child process forked from it that exits when the sample is done
(isolate.py, sampler.ForkedSampler), unless AgentOptions.fork_samples is off. The HTTP server
runs in its own threads and reads only what the Agent hands out under its lock: the latest
sample as published (never changed once published: its counts, addresses and the snapshot,
packed), copies of the edges, and the health fields. An answer built from the snapshot is
built in a child process too, once per sample and view, and kept gzipped.
"""
from __future__ import annotations

import fcntl
import gzip
import json
import resource
import signal
import socket
import sys
import termios
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TextIO, cast
from urllib.parse import parse_qs, urlsplit

from prometheus_client.exposition import choose_encoder, gzip_accepted

from .. import views
from ..errors import CorruptStore, NsnetError, StoreError
from ..model import Snapshot, condition_of
from ..options import AgentOptions
from ..ownership import resolve_user
from ..records import record
from ..sanitize import Stream, json_chunks, json_text, printable
from . import allocator
from .auth import OPEN_PATHS, TokenAuth, challenge
from .edges import EdgeBook, EdgeKey, EdgeState
from .events import DestroyWatcher
from .history import deps_view
from .isolate import run_forked
from .metrics import AgentMetrics
from .sampler import ForkedSampler, Published, Sample, Sampler, Scanner, stall_after
from .store import SampleRecord, Store, move_aside, parse_since

VIEWS: dict[str, Callable[[Snapshot], dict]] = {
    "sockets": views.sockets_stream,
    "by-namespace": views.by_namespace_view,
    "by-user": views.by_user_view,
    "by-pod": views.by_pod_view,
}


@record(frozen=True)
class Encoded:
    """A JSON answer as the pieces it was encoded in (joined, they would be a second copy),
    gzipped or not; `plain_length`: its length once decompressed."""
    pieces: tuple[bytes, ...]
    length: int
    gzipped: bool = False
    plain_length: int = 0

    def plain_pieces(self, size: int = 1 << 16) -> Iterator[bytes]:
        """The answer as it decompresses, a bounded piece at a time."""
        if not self.gzipped:
            yield from self.pieces
            return
        inflate = zlib.decompressobj(wbits=31)
        for piece in self.pieces:
            while piece:
                out = inflate.decompress(piece, size)
                piece = inflate.unconsumed_tail
                if out:
                    yield out
        rest = inflate.flush()
        if rest:
            yield rest


def _chunk_text(doc: dict, piece_size: int) -> Iterator[str]:
    pending: list[str] = []
    size = 0
    for chunk in json_chunks(doc):
        pending.append(chunk)
        size += len(chunk)
        if size >= piece_size:
            yield "".join(pending)
            pending, size = [], 0
    pending.append("\n")
    yield "".join(pending)


def encode(doc: dict, piece_size: int = 1 << 16, gzipped: bool = False) -> Encoded:
    """The document's JSON, streamed from it (sanitize.json_chunks) into pieces; gzipped: in
    gzip's format (what an HTTP client that accepts gzip is sent as it is), at level 1 --
    JSON compresses ~10x even so, at a fraction of level 6's CPU."""
    if not gzipped:
        pieces = tuple(text.encode() for text in _chunk_text(doc, piece_size))
        length = sum(len(p) for p in pieces)
        return Encoded(pieces, length, plain_length=length)
    deflate = zlib.compressobj(1, wbits=31)
    packed: list[bytes] = []
    plain = 0
    for text in _chunk_text(doc, piece_size):
        data = text.encode()
        plain += len(data)
        out = deflate.compress(data)
        if out:
            packed.append(out)
    packed.append(deflate.flush())
    return Encoded(tuple(packed), sum(len(p) for p in packed), True, plain)


def without_cmdlines(doc: Any) -> Any:
    """The endpoint is reachable by whoever can reach the pod network, and it sees every
    tenant's processes: command lines (which may carry secrets) are blanked unless asked."""
    if isinstance(doc, dict):
        return {k: ([] if k == "cmdline" else without_cmdlines(v)) for k, v in doc.items()}
    if isinstance(doc, list):
        return [without_cmdlines(v) for v in doc]
    if isinstance(doc, Stream):
        return Stream(map(without_cmdlines, doc.items))
    return doc


def open_store(options: AgentOptions, err: TextIO) -> tuple[Store | None, str]:
    """The history, or None: an unusable database is said once and the agent runs on in
    memory, rather than exiting into a crash loop that would hide the reason in restarts. A
    damaged one is moved aside (kept for inspection) and a fresh one started."""
    if not options.db:
        return None, "memory only (no --db)"
    try:
        try:
            return Store(options.db, retention=options.retention), f"sqlite {options.db}"
        except CorruptStore as exc:
            aside = move_aside(options.db)
            err.write(f"nsnet: warning: {printable(str(exc))}: moved aside to "
                      f"{printable(aside)}; starting a fresh history\n")
            return Store(options.db, retention=options.retention), \
                f"sqlite {options.db} (a damaged one moved aside to {aside})"
    except StoreError as exc:
        err.write(f"nsnet: warning: {printable(str(exc))}; keeping history in memory only\n")
        return None, f"memory only: {exc}"


class Agent:
    """The sampler's loop and what it shares with the HTTP threads. Everything those threads
    read goes through a method that takes the lock and hands out an immutable value or a
    copy; the loop changes shared state only under the same lock."""

    def __init__(self, options: AgentOptions, err: TextIO, *,
                 store: Store | None = None, history: str = "memory only (no --db)",
                 scanner: Scanner | None = None, watcher: DestroyWatcher | None = None):
        self.options = options
        self.err = err
        self.services = options.sampling.snapshot.services
        self.store = store
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.book = EdgeBook(options.retention)
        self.metrics = AgentMetrics(options.node, self.edge_rows, self.services,
                                    options.max_series, version=lambda: self.book.version,
                                    addresses=self.address_rows, samples=self.sample_count)
        # shared with the HTTP threads, under self.lock
        self._published: Published | None = None
        self._samples = 0
        self._last_error: str | None = None
        self._last_sample_end = time.monotonic()
        self._history = history
        self._said: set[str] = set()
        self._reading_said = False
        # the API's answers: view -> (the number of the sample it was built from, answer)
        self._views: dict[str, tuple[int, Encoded]] = {}
        self._views_lock = threading.Lock()
        self._building = threading.BoundedSemaphore(2)
        self._view_builds = {view: threading.Lock() for view in VIEWS}
        # /metrics renders at once: each formats every edge series (thousands of lines,
        # holding the GIL); a burst of scrapers must queue, not starve the sampler
        self.rendering = threading.BoundedSemaphore(2)
        self.views_built = 0
        self._http_cpu = 0.0       # CPU seconds the finished HTTP requests used
        self._http_live: dict[int, float] = {}    # thread -> its CPU clock at the start
        self._history_error: str | None = None   # the last history write's failure
        self._last_good_sample = time.monotonic()
        if store is not None:
            try:
                self.book.load(store.edges(since=time.time() - options.retention,
                                           node=options.node))
            except StoreError as exc:
                self.say_once(f"{exc} (the agent starts with an empty memory)")
        self._scanner, self._watcher = scanner, watcher
        self._sampler: Sampler | ForkedSampler | None = None

    @property
    def sampler(self) -> Sampler | ForkedSampler:
        """Made at the first sample, after the agent has said where it serves (the sampler
        says once what it cannot do: destroy events without their privileges)."""
        if self._sampler is None:
            inner = Sampler(self.options.sampling, self.say_once, hurry=self.stop,
                            scanner=self._scanner, watcher=self._watcher,
                            others_cpu=self.http_cpu)
            self._sampler = ForkedSampler(inner, self.stop) if self.options.fork_samples \
                else inner
        return self._sampler

    def http_started(self) -> None:
        """The calling HTTP thread starts on a request: its CPU from now on is the client's."""
        with self.lock:
            self._http_live[threading.get_ident()] = time.thread_time()

    def http_done(self) -> None:
        with self.lock:
            start = self._http_live.pop(threading.get_ident(), None)
            if start is not None:
                self._http_cpu += time.thread_time() - start

    def http_cpu(self) -> float:
        """CPU seconds spent on HTTP clients so far, those being answered now included (read
        from their threads' CPU clocks): the sampler subtracts it from its budget."""
        with self.lock:
            total, live = self._http_cpu, list(self._http_live.items())
        for ident, start in live:
            try:
                total += time.clock_gettime(time.pthread_getcpuclockid(ident)) - start
            except (OSError, ProcessLookupError):
                pass   # it has just finished: http_done() counted it
        return total

    # ------------------------------------------------------------- read by HTTP threads
    def edge_rows(self) -> list[tuple[EdgeKey, EdgeState]]:
        with self.lock:
            return [(k, replace(s)) for k, s in self.book.edges.items()]

    def published(self) -> Published | None:
        with self.lock:
            return self._published

    def _published_sample(self) -> tuple[Published | None, int]:
        """The latest sample and its number (samples taken so far)."""
        with self.lock:
            return self._published, self._samples

    def latest(self) -> Snapshot | None:
        """The latest snapshot (unpacked anew at each call when samples are forked)."""
        published = self.published()
        return None if published is None else published.snapshot()

    def address_rows(self) -> tuple[tuple[str, ...], ...]:
        published = self.published()
        return () if published is None else published.addresses

    def sample_count(self) -> int:
        with self.lock:
            return self._samples

    def status(self) -> dict[str, Any]:
        with self.lock:
            return {"samples": self._samples, "last_error": self._last_error,
                    "history": self._history, "history_error": self._history_error,
                    "ready": self._published is not None,
                    "last_sample_end": self._last_sample_end}

    def alive(self) -> bool:
        # The sampler is stuck, or failing, when no sample succeeded within a few intervals
        # (a snapshot of a busy node takes seconds, not minutes).
        with self.lock:
            since = time.monotonic() - self._last_good_sample
        return since < stall_after(self.options.sampling.interval)

    def document(self, view: str) -> dict | None:
        """A view of the latest snapshot as a client of the API reads it."""
        data = self.document_bytes(view)
        return None if data is None else json.loads(b"".join(data.plain_pieces()))

    def document_bytes(self, view: str) -> Encoded | None:
        """A view of the latest snapshot as the JSON the API sends, in pieces: built once
        per sample and view, whoever asks and however often (a burst of clients costs one
        build), at most two built at once, each streamed from the snapshot into its pieces
        (sanitize.json_chunks) -- never a whole document of dicts, nor its text and bytes
        at once. From a packed snapshot (forked samples), the answer is built in a child
        process, which unpacks the snapshot, and kept gzipped: the agent itself holds only
        that (a few MiB at 400 namespaces), whatever the build cost."""
        published, number = self._published_sample()
        if published is None:
            return None
        with self._views_lock:
            cached = self._views.get(view)
            if cached is not None and cached[0] >= number:
                return cached[1]
        # one build of a view at a time (the others asking for it wait for that one), and
        # at most two builds at all. A waiter takes what was built while it waited when that
        # is of its sample or a newer one, and a build is of the latest sample: when samples
        # come as fast as answers are built (a busy node, a slow VM), a burst of waiters
        # would otherwise each build the sample it asked for, one after the other, as the
        # answers of older samples are not kept
        with self._view_builds[view], self._building:
            with self._views_lock:
                cached = self._views.get(view)
                if cached is not None and cached[0] >= number:
                    return cached[1]
            published, number = self._published_sample()
            assert published is not None
            data = self._build(published, view)
            with self._views_lock:
                cached = self._views.get(view)
                if cached is None or cached[0] < number:
                    self._views[view] = (number, data)
                self.views_built += 1
            return data

    def _build(self, published: Published, view: str) -> Encoded:
        expose = self.options.expose_cmdlines

        def answer(snap: Snapshot, gzipped: bool) -> Encoded:
            doc = VIEWS[view](snap)
            return encode(doc if expose else without_cmdlines(doc), gzipped=gzipped)

        if published.snap is not None:
            return answer(published.snap, False)
        # the sockets view streams its sockets a packed chunk at a time; the others (whose
        # answers are small) go over them several times: unpacked once, whole
        lazy = VIEWS[view] is views.sockets_stream
        done = run_forked(lambda hurry: (answer(published.snapshot(lazy=lazy), True), []),
                          deadline=stall_after(self.options.sampling.interval),
                          what="answer")
        assert isinstance(done.value, Encoded)
        return done.value

    def dependencies(self, since: float | None, uid: int | None,
                     confirmed: bool = False) -> dict:
        node = self.options.node
        rows = [(node, k, s) for k, s in self.edge_rows()
                if s.last_seen >= (since or 0.0) and (uid is None or k.uid == uid)]
        rows.sort(key=lambda row: row[1])
        return deps_view(rows, self.services, since, "agent", confirmed=confirmed)

    # ------------------------------------------------------------------- the loop
    def say_once(self, line: str) -> None:
        # once per condition, not every interval nor each time a count in it changes
        condition = condition_of(line)
        if condition not in self._said:
            self._said.add(condition)
            self.err.write(f"nsnet: warning: {printable(line)}\n")

    def step(self) -> float:
        """One sample, recorded and exported; returns how long to wait before the next."""
        try:
            sample = self.sampler.sample()
        except NsnetError as exc:
            self._record(None, str(exc))
            self.metrics.sample_failures.inc()
            self.err.write(f"nsnet: sample failed: {printable(str(exc))}\n")
            self.err.flush()
            return self.options.sampling.interval
        with self.lock:
            self.book.update(sample.observed, sample.ts)
        self._commit(sample)
        self._export(sample)
        self._record(sample.published, None)
        if not self._reading_said:     # the operator's one line on what reads the node
            self._reading_said = True
            self.err.write(f"nsnet: first sample: {printable(sample.stats.reading_line())}\n")
        self.err.flush()
        wait = self.sampler.wait_after(sample)
        del sample      # the previous snapshot is gone now: its memory back to the system
        allocator.trim()
        return wait

    def run(self) -> None:
        while not self.stop.is_set():
            self.stop.wait(self.step())

    def close(self) -> None:
        if self._sampler is not None:
            self._sampler.close()
        if self.store is not None:
            self.store.close()

    def _commit(self, sample: Sample) -> None:
        if self.store is None:
            return
        stats = sample.stats
        record = SampleRecord(sample.ts, sample.wall, sample.cpu, stats.namespaces,
                              stats.sockets, sample.over_budget)
        try:
            self.store.record(self.options.node, sample.observed, record)
            error = None
        except CorruptStore as exc:
            error = str(exc)
            self.metrics.store_errors.inc()
            self._replace_store(exc)
        except StoreError as exc:
            error = str(exc)
            self.metrics.store_errors.inc()
            self.say_once(f"{exc} (the agent goes on; history since then is in memory only)")
        with self.lock:
            self._history_error = error

    def _replace_store(self, exc: CorruptStore) -> None:
        """The history went bad under us: keep it aside, go on with a fresh one (the edges
        in memory are written again from the next sample on)."""
        assert self.store is not None
        self.store.close()
        path = self.store.path
        try:
            aside = move_aside(path)
            self.store = Store(path, retention=self.options.retention)
            self.say_once(f"{exc}: moved aside to {aside}; starting a fresh history")
            history = f"sqlite {path} (a damaged one moved aside to {aside})"
        except StoreError as again:
            self.store = None
            self.say_once(f"{again} (the agent goes on with history in memory only)")
            history = f"memory only: {again}"
        with self.lock:
            self._history = history

    def _export(self, sample: Sample) -> None:
        metrics = self.metrics
        metrics.observe_sample(sample.stats, sample.wall, sample.cpu, sample.over_budget,
                               sample.peak_rss)
        metrics.events.inc(sample.closed)
        watcher = self.sampler.watcher
        if watcher is not None:
            _, dropped, watched = watcher.counts()
            metrics.dropped_events(dropped)
            metrics.namespaces_watched.set(watched)

    def _record(self, published: Published | None, error: str | None) -> None:
        if published is not None:
            # the answers built for older samples are not served again: not kept either (one
            # would hold its snapshot and its encoded text -- tens of MiB on a busy node --
            # until that view was asked for again)
            with self._views_lock:
                self._views.clear()
        with self.lock:
            if published is not None:
                self._published = published
                self._samples += 1
                self._last_good_sample = time.monotonic()
            self._last_error = error
            self._last_sample_end = time.monotonic()


_PATHS = ["/healthz", "/readyz", "/metrics",
          "/api/v1/dependencies?since=24h&user=U&confirmed=1",
          "/api/v1/snapshot?view=" + "|".join(VIEWS)]


def _queued(sock: Any) -> int | None:
    """Bytes of a TCP socket's send queue (SIOCOUTQ, Linux: not yet acknowledged by the
    peer); None if the kernel does not say."""
    try:
        return int.from_bytes(fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, bytes(4)),
                              sys.byteorder, signed=True)
    except OSError:
        return None


class _Handler(BaseHTTPRequestHandler):
    """One request; `agent` and `auth` are set on the subclass http_server() makes for its
    Agent (auth None: no token asked)."""

    server_version = "nsnet"
    agent: Agent
    auth: TokenAuth | None = None

    def log_message(self, format: str, *args: Any) -> None:
        pass   # probes every few seconds would drown the agent's own messages

    def handle(self) -> None:
        # what a client costs is the client's, not the sampler's budget (Sampler.cpu)
        self.agent.http_started()
        try:
            super().handle()
        finally:
            self.agent.http_done()

    def handle_one_request(self) -> None:
        # until its request line and headers are in, a connection may be closed to make
        # room for another (_Server._take): a slow client's, never an answer being sent
        server = cast("_Server", self.server)
        server.waits(self.connection, True)
        try:
            super().handle_one_request()
        finally:
            server.waits(self.connection, False)

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        cast("_Server", self.server).waits(self.connection, False)
        return parsed

    def _send_bytes(self, status: HTTPStatus, data: bytes, content_type: str,
                    headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self._write(data)

    def _write(self, data: bytes) -> None:
        """Send all of `data`, dropping the client (TimeoutError) only when it took no byte
        for http_timeout: a slow reader that keeps reading gets its whole answer.

        Neither sendall() nor send() can tell that with the socket's own timeout. sendall()'s
        bounds the whole call (Python >= 3.5). A blocked send() is woken only once the
        kernel's send buffer is at least a third free (sk_stream_write_space: free space >=
        half of what is queued), and the buffer grows to megabytes (tcp_wmem): a client
        reading 5 KiB/s frees that in minutes, and was cut at 10 s after 2.1 MB of a 10.8 MB
        answer. So send() waits in slices of a quarter of the timeout, and between them the
        bytes still queued (SIOCOUTQ: sent and not acknowledged, or not sent yet) say
        whether the client took any."""
        sock = self.connection
        limit = sock.gettimeout()
        view = memoryview(data)
        if limit is None:
            sock.sendall(view)
            return
        sock.settimeout(limit / 4)
        try:
            took = time.monotonic()     # when the client last took a byte
            queued: int | None = None
            while view:
                try:
                    view = view[sock.send(view):]
                    took, queued = time.monotonic(), None
                except TimeoutError:
                    now = _queued(sock)
                    if queued is not None and now is not None and now < queued:
                        took = time.monotonic()
                    queued = now
                    if time.monotonic() - took >= limit:
                        raise
        finally:
            sock.settimeout(limit)

    def _send_encoded(self, status: HTTPStatus, data: Encoded, content_type: str) -> None:
        # a gzipped answer goes as it is to a client that accepts gzip (and one that does not
        # gets it decompressed as it is sent, a piece at a time)
        as_is = not data.gzipped or gzip_accepted(self.headers.get("Accept-Encoding", ""))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(data.length if as_is else data.plain_length))
        if data.gzipped and as_is:
            self.send_header("Content-Encoding", "gzip")
        self.end_headers()
        for piece in data.pieces if as_is else data.plain_pieces():
            self._write(piece)

    def _send(self, status: HTTPStatus, body: dict,
              headers: tuple[tuple[str, str], ...] = ()) -> None:
        self._send_bytes(status, (json_text(body) + "\n").encode(), "application/json",
                         headers)

    def _authorized(self, path: str) -> bool:
        """Whether the request may go on; if not, it is answered 401 here and counted. The
        probes' paths are open (the kubelet sends no token); every other path is closed,
        unknown ones too (a 404 would list the paths to a stranger)."""
        if self.auth is None or path in OPEN_PATHS:
            return True
        refused = self.auth.verdict(self.headers.get_all("Authorization") or [])
        if refused is None:
            return True
        self.agent.metrics.http_unauthorized.labels(refused).inc()
        self._send(HTTPStatus.UNAUTHORIZED, {"error": "unauthorized: a bearer token is required"
                                             if refused == "missing" else
                                             "unauthorized: wrong bearer token"},
                   (("WWW-Authenticate", challenge(refused)),))
        return False

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if not self._authorized(url.path):
            return
        route = _ROUTES.get(url.path)
        if route is None:
            self._send(HTTPStatus.NOT_FOUND, {"error": "not found", "paths": _PATHS})
        else:
            route(self, parse_qs(url.query))

    def healthz(self, query: dict[str, list[str]]) -> None:
        ok = self.agent.alive()
        self._send(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE,
                   {"status": "ok" if ok else "sampler stalled"})

    def readyz(self, query: dict[str, list[str]]) -> None:
        status = self.agent.status()
        failing = status["history_error"] is not None
        ready = status["ready"] and not failing
        self._send(HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE,
                   {"status": "ready" if ready else
                    "history writes failing" if status["ready"] else "no sample yet",
                    "samples": status["samples"], "last_error": status["last_error"],
                    "history": status["history"], "history_error": status["history_error"]})

    def metrics(self, query: dict[str, list[str]]) -> None:
        # as prometheus_client's own exposition answers: OpenMetrics when the scraper asks
        # for it (Accept), gzip when it accepts that (a scrape of 5,000 series is ~3.6 MB of
        # text, ~14x less gzipped), only the families of name[] when given
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        metrics = self.agent.metrics
        with self.agent.rendering:
            data = encoder(metrics.registry.restricted_registry(query["name[]"])) \
                if "name[]" in query else metrics.render(encoder, content_type)
        headers: tuple[tuple[str, str], ...] = ()
        if gzip_accepted(self.headers.get("Accept-Encoding", "")):
            data, headers = gzip.compress(data, compresslevel=6), (("Content-Encoding", "gzip"),)
        self._send_bytes(HTTPStatus.OK, data, content_type, headers)

    def snapshot(self, query: dict[str, list[str]]) -> None:
        view = query.get("view", ["sockets"])[0]
        if view not in VIEWS:
            self._send(HTTPStatus.BAD_REQUEST, {"error": f"unknown view; one of {', '.join(VIEWS)}"})
            return
        try:
            data = self.agent.document_bytes(view)
        except NsnetError as exc:     # its child failed (killed, out of time): said, not kept
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
            return
        if data is None:
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "no sample yet"})
        else:
            self._send_encoded(HTTPStatus.OK, data, "application/json")

    def dependencies(self, query: dict[str, list[str]]) -> None:
        try:
            since = parse_since(query["since"][0]) if "since" in query else None
            uid = resolve_user(query["user"][0]) if "user" in query else None
        except ValueError as exc:
            self._send(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        confirmed = query.get("confirmed", ["0"])[0] not in ("", "0", "false", "no")
        self._send(HTTPStatus.OK, self.agent.dependencies(since, uid, confirmed))


_ROUTES: dict[str, Callable[[_Handler, dict[str, list[str]]], None]] = {
    "/healthz": _Handler.healthz, "/readyz": _Handler.readyz, "/metrics": _Handler.metrics,
    "/api/v1/snapshot": _Handler.snapshot, "/api/v1/dependencies": _Handler.dependencies,
}


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer with limits: a real listen backlog; at most max_per_client
    connections from one address (the next is answered 503 at once and closed by the
    accepting thread, never queued behind idle ones) and max_connections in all -- past it,
    the connection that has waited longest for a request is closed to make room (what
    servers do against slow clients): clients holding idle connections from many addresses
    cannot starve the kubelet's probes, which send their request at once; each silent
    client dropped after http_timeout, and each whose request is not in after
    header_deadline (a byte every few seconds); a client that goes away mid-answer is counted, not
    worth a traceback."""

    request_queue_size = 128
    daemon_threads = True
    BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\n\r\n{\"error\": \"too many connections\"}\n")

    def __init__(self, address: tuple[str, int], handler: type, max_connections: int,
                 max_per_client: int, header_deadline: float = 30.0):
        self.max_connections, self.max_per_client = max_connections, max_per_client
        self.header_deadline = header_deadline
        self.timed_out = 0                  # closed: no whole request within header_deadline
        self.open: dict[str, int] = {}      # client address -> connections being served
        self.count_lock = threading.Lock()
        # connections waiting for a request line (a new one, or kept alive between two),
        # oldest first: the ones closed to make room
        self.waiting: dict[Any, float] = {}
        self.closing: set[int] = set()      # id()s closed to make room, threads not done yet
        self.refused = 0
        self.evicted = 0
        self.client_errors = 0
        super().__init__(address, handler)

    def waits(self, connection: Any, waiting: bool) -> None:
        with self.count_lock:
            if waiting:
                self.waiting[connection] = time.monotonic()
            else:
                self.waiting.pop(connection, None)

    def service_actions(self) -> None:
        """Between two polls of the accept loop (every 0.5 s): close the connections that
        have been sending their request for longer than header_deadline. http_timeout bounds
        each silence; a client sending a byte every few seconds would hold its connection
        (and thread) for as long as it likes."""
        horizon = time.monotonic() - self.header_deadline
        with self.count_lock:
            for connection in [c for c, since in self.waiting.items() if since < horizon]:
                self.timed_out += 1      # counted first: the client may see the close at once
                self._close_waiting(connection)

    def _close_waiting(self, connection: Any) -> None:
        """Close a connection still waiting for its request (count_lock held): its thread
        wakes up to an end of file and finishes."""
        del self.waiting[connection]
        try:
            connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.closing.add(id(connection))

    def _take(self, client: str) -> bool:
        with self.count_lock:
            if self.open.get(client, 0) >= self.max_per_client:
                self.refused += 1
                return False
            if sum(self.open.values()) - len(self.closing) >= self.max_connections:
                if not self.waiting:
                    self.refused += 1
                    return False
                self.evicted += 1
                self._close_waiting(next(iter(self.waiting)))   # the oldest: insertion order
            self.open[client] = self.open.get(client, 0) + 1
            return True

    def _give_back(self, client: str, connection: Any) -> None:
        with self.count_lock:
            self.waiting.pop(connection, None)
            self.closing.discard(id(connection))
            left = self.open.pop(client, 1) - 1
            if left:
                self.open[client] = left

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._take(client_address[0]):
            try:
                request.settimeout(1.0)
                request.sendall(self.BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._give_back(client_address[0], request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a reset, a timeout or a half-sent request is the client's business: counted
        self.client_errors += 1


def http_server(agent: Agent, auth: TokenAuth | None = None) -> ThreadingHTTPServer:
    """The agent's HTTP side, bound to options.listen, not yet serving; with `auth`, every
    path but the probes' asks for its token."""
    options = agent.options
    host, port = options.listen
    try:
        handler = type("Handler", (_Handler,), {"agent": agent, "auth": auth,
                                                "timeout": options.http_timeout})
        server = _Server((host, port), handler, options.max_connections, options.max_per_client,
                         options.http_header_deadline)
    except OSError as exc:
        raise NsnetError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return server


def raise_fd_limit() -> int:
    """RLIMIT_NOFILE's soft limit raised to the hard one (one netlink socket per namespace and
    the HTTP clients need more than the usual 1024); returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError):
            pass
    return soft


def serve(options: AgentOptions, err: TextIO, *, scanner: Scanner | None = None) -> int:
    """Run the agent until SIGTERM (finish the current sample, commit it, exit 0)."""
    # First: a bad token file is a one-line error before anything is opened or listens.
    auth = TokenAuth(options.auth_token_file, err) if options.auth_token_file else None
    allocator.tune()     # before any thread: two malloc arenas, a fixed mmap threshold
    raise_fd_limit()
    store, history = open_store(options, err)
    agent = Agent(options, err, store=store, history=history, scanner=scanner)
    try:
        server = http_server(agent, auth)
    except NsnetError:
        agent.close()
        raise
    http_thread = threading.Thread(target=server.serve_forever, name="nsnet-http", daemon=True)
    http_thread.start()
    # SIGTERM (pod deletion): finish the current sample, commit it, then leave with status 0.
    previous = signal.signal(signal.SIGTERM, lambda *_: agent.stop.set())
    host, _ = options.listen
    guard = f", bearer token from {options.auth_token_file} (all but /healthz and /readyz)" \
        if auth is not None else ""
    err.write(f"nsnet: serving on {host}:{server.server_address[1]}, "
              f"a sample every {options.sampling.interval:g} s, history: {history}{guard}\n")
    err.flush()
    try:
        agent.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.shutdown()
        server.server_close()
        agent.close()
    return 0
