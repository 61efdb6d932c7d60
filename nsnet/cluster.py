"""`nsnet cluster`: the cluster-wide dependency map, from Prometheus alone.

Every node's agent exports its edges (nsnet_edge_*) and its own addresses
(nsnet_address_info); a Prometheus that scrapes them all holds the whole cluster. This module
asks it (a few instant queries at one explicit time, QUERIES), then joins the answers without
any further I/O (build_map): an edge's peer address on one node is a pod, the host or another
namespace on whichever node owns it, and pods are grouped into their workloads.

Three parts, kept apart:

* Prometheus: a small HTTP API client on urllib (`/api/v1/query`). Its answers are untrusted:
  the body read is bounded, every field used is type-checked, and every failure is one
  PrometheusError (an NsnetError: one line from the CLI, never a traceback).
* build_map: pure, query results in, the map (a JSON-ready document, schema nsnet/1) out.
* the renderers (table, dot, mermaid) of that document; every label from Prometheus is
  untrusted text, escaped as nsnet escapes /proc's.

What is a guess is said to be one: a workload known only from its pod's name, a ReplicaSet's
Deployment known only from the ReplicaSet's name, an edge whose user or direction the agent
only guessed, an address several owners held in the window.
"""
from __future__ import annotations

import ipaddress
import json
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import field
from http.client import HTTPException, HTTPMessage
from typing import IO

from . import SCHEMA
from .errors import NsnetError
from .model import STRENGTH, ServiceMap, is_guess
from .records import record

# ------------------------------------------------------------------------------ PromQL

# The labels that make one edge of one node (metrics.EDGE_LABELS without the two that
# describe it: evidence and direction_inferred can change during the window, and must not
# split the edge). `max by`, never `sum by`: two Prometheus jobs scraping the same agent (an
# HA pair, a ServiceMonitor and a static job) give the same series twice.
EDGES_QUERY = (
    "max by (node, uid, user, namespace, pod, netns, direction, proto, peer, port, via, "
    "service, evidence, direction_inferred) "
    "(max_over_time(nsnet_edge_last_seen_timestamp_seconds[{since}]))")
PEAK_QUERY = (
    "max by (node, uid, user, namespace, pod, netns, direction, proto, peer, port, via, "
    "service) (max_over_time(nsnet_edge_connections[{since}]))")
# now: the latest sample (an instant selector: a series whose agent went away goes stale,
# where last_over_time would still count its connections as open)
OPEN_QUERY = (
    "max by (node, uid, user, namespace, pod, netns, direction, proto, peer, port, via, "
    "service) (nsnet_edge_connections)")
OPENED_QUERY = (
    "max by (node, uid, user, namespace, pod, netns, direction, proto, peer, port, via, "
    "service) (increase(nsnet_edge_connections_opened_total[{since}]))")
ADDRESSES_QUERY = (
    "max by (node, address, kind, namespace, pod, netns) "
    "(last_over_time(nsnet_address_info[{since}]))")
# kube-state-metrics, when Prometheus has it (optional: without it, workloads come from the
# pods' names, and are marked as guesses)
POD_OWNERS_QUERY = (
    "max by (namespace, pod, owner_kind, owner_name) (last_over_time(kube_pod_owner[{since}]))")
REPLICASET_OWNERS_QUERY = (
    "max by (namespace, replicaset, owner_kind, owner_name) "
    "(last_over_time(kube_replicaset_owner[{since}]))")

QUERIES: dict[str, str] = {
    "edges": EDGES_QUERY, "peak": PEAK_QUERY, "open": OPEN_QUERY, "opened": OPENED_QUERY,
    "addresses": ADDRESSES_QUERY, "pod_owners": POD_OWNERS_QUERY,
    "replicaset_owners": REPLICASET_OWNERS_QUERY,
}

IDENTITY = ("node", "uid", "user", "namespace", "pod", "netns", "direction", "proto", "peer",
            "port", "via", "service")
OVERFLOW = "__overflow__"        # metrics.OVERFLOW (not imported: that needs prometheus_client)
# Prometheus' duration syntax (1h, 30m, 1h30m, 7d)
_DURATION = re.compile(r"^(?:[0-9]+(?:ms|s|m|h|d|w|y))+$")


def check_since(since: str) -> str:
    """A Prometheus duration, else ValueError (it is pasted into the queries)."""
    if not _DURATION.fullmatch(since) or not any(c in "123456789" for c in since):
        raise ValueError(f"not a Prometheus duration (30m, 1h, 7d, 1h30m): {since!r}")
    return since


_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400,
                 "y": 365 * 86400}


def duration_seconds(since: str) -> float:
    """1h30m -> 5400.0 (as Prometheus counts: a year is 365 days)."""
    check_since(since)
    return sum(int(n) * _UNIT_SECONDS[unit]
               for n, unit in re.findall(r"([0-9]+)(ms|s|m|h|d|w|y)", since))


def queries(since: str) -> dict[str, str]:
    """The queries sent, `{since}` filled in (str.replace: PromQL has braces of its own)."""
    check_since(since)
    return {name: q.replace("{since}", since) for name, q in QUERIES.items()}


# -------------------------------------------------------------------------- the client

class PrometheusError(NsnetError):
    """Prometheus could not be asked, or answered something unusable: one line."""


MAX_RESPONSE = 256 << 20        # a large cluster's edges are tens of MiB; beyond: not ours
MAX_ERROR_TEXT = 300            # of an error Prometheus gives, shown on the one line
MAX_TOKEN_FILE = 64 << 10


@record(frozen=True)
class Series:
    """One element of an instant vector: its labels and its value."""
    labels: Mapping[str, str]
    value: float


def check_url(url: str) -> str:
    """The base URL (http or https, a host, perhaps a path prefix), without a trailing /."""
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port      # raises ValueError on a bad port
    except ValueError as exc:
        raise PrometheusError(f"not a Prometheus URL: {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PrometheusError(f"not an http:// or https:// URL: {url!r}")
    if parts.username is not None or parts.password is not None:
        # urllib would not send them, and the URL is printed in errors
        raise PrometheusError("credentials in the Prometheus URL are not supported: use "
                              "--bearer-token-file")
    if parts.query or parts.fragment:
        raise PrometheusError(f"the Prometheus URL takes no query or fragment: {url!r}")
    return url.rstrip("/")


def read_token(path: str) -> str:
    """The bearer token: the file's content, stripped. Never shown in an error."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TOKEN_FILE + 1)
    except OSError as exc:
        raise PrometheusError(f"cannot read bearer token file {path}: "
                              f"{(exc.strerror or str(exc)).lower()}") from exc
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError:
        token = ""
    if len(data) > MAX_TOKEN_FILE or not token or not all(33 <= ord(c) < 127 for c in token):
        raise PrometheusError(f"bearer token file {path}: not one token of printable ASCII")
    return token


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # urllib would follow a redirect to any host with our Authorization header
    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                         headers: HTTPMessage, newurl: str) -> urllib.request.Request | None:
        raise PrometheusError(f"Prometheus answered with a redirect (HTTP {code}) to "
                              f"{newurl[:200]}: give that URL")


def _cut(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_TEXT else text[:MAX_ERROR_TEXT] + "..."


class Prometheus:
    """Instant queries of one Prometheus, at explicit times."""

    def __init__(self, url: str, timeout: float = 30.0, token: str | None = None,
                 max_bytes: int = MAX_RESPONSE):
        self.url = check_url(url)
        self.timeout = timeout
        self.token = token
        self.max_bytes = max_bytes
        self._opener = urllib.request.build_opener(_NoRedirects())

    def query(self, promql: str, at: float) -> list[Series]:
        """The instant vector `promql` evaluates to at `at` (a Unix time)."""
        params = urllib.parse.urlencode({"query": promql, "time": f"{at:.3f}",
                                         "timeout": f"{self.timeout:g}s"})
        request = urllib.request.Request(f"{self.url}/api/v1/query?{params}",
                                         headers={"Accept": "application/json"})
        if self.token is not None:
            request.add_header("Authorization", f"Bearer {self.token}")
        return parse_vector(self._fetch(request))

    def _fetch(self, request: urllib.request.Request) -> bytes:
        where = f"Prometheus at {self.url}"
        try:
            with self._opener.open(request, timeout=self.timeout) as resp:
                return self._bounded(resp.read(self.max_bytes + 1))
        except urllib.error.HTTPError as exc:
            raise PrometheusError(f"{where}: {_http_error(exc, self.max_bytes)}") from exc
        except urllib.error.URLError as exc:
            reason = exc.reason
            text = (reason.strerror or str(reason)) if isinstance(reason, OSError) \
                else str(reason)
            if isinstance(reason, TimeoutError):
                text = f"no answer within {self.timeout:g} s"
            raise PrometheusError(f"cannot reach {where}: {_cut(text).lower()}") from exc
        except TimeoutError as exc:
            raise PrometheusError(f"{where}: no answer within {self.timeout:g} s") from exc
        except (OSError, HTTPException, ValueError) as exc:
            raise PrometheusError(f"{where}: {_cut(str(exc) or type(exc).__name__)}") from exc

    def _bounded(self, body: bytes) -> bytes:
        if len(body) > self.max_bytes:
            raise PrometheusError(f"Prometheus at {self.url}: an answer larger than "
                                  f"{self.max_bytes} bytes")
        return body


def _http_error(exc: urllib.error.HTTPError, max_bytes: int) -> str:
    """'HTTP 400: bad_data: parse error ...' -- Prometheus' own words when it gave some."""
    try:
        body = exc.read(min(max_bytes, 1 << 20))
    except (OSError, HTTPException):
        body = b""
    said = ""
    try:
        doc = json.loads(body)
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            kind = doc.get("errorType")
            said = f"{kind}: {doc['error']}" if isinstance(kind, str) else doc["error"]
    except (ValueError, RecursionError):
        said = body.decode("utf-8", "replace") if body.strip() else ""
    return f"HTTP {exc.code}" + (f": {_cut(said)}" if said else f" {exc.reason}")


def parse_vector(body: bytes) -> list[Series]:
    """An /api/v1/query answer's instant vector; PrometheusError for anything else."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise PrometheusError("Prometheus' answer is not JSON (is the URL Prometheus'?)") \
            from None
    if not isinstance(doc, dict) or doc.get("status") not in ("success", "error"):
        raise PrometheusError("Prometheus' answer has no status: not its query API")
    if doc["status"] == "error":
        kind, text = doc.get("errorType"), doc.get("error")
        raise PrometheusError("Prometheus: " + _cut(
            f"{kind if isinstance(kind, str) else 'error'}: "
            f"{text if isinstance(text, str) else 'no message'}"))
    data = doc.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "vector" \
            or not isinstance(data.get("result"), list):
        raise PrometheusError("Prometheus' answer is not an instant vector")
    return [_series(item) for item in data["result"]]


def _series(item: object) -> Series:
    if not isinstance(item, dict):
        raise PrometheusError("Prometheus' answer: a series that is not an object")
    metric, value = item.get("metric"), item.get("value")
    if not isinstance(metric, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metric.items()):
        raise PrometheusError("Prometheus' answer: a series whose labels are not strings")
    if not isinstance(value, list) or len(value) != 2 or not isinstance(value[1], str) \
            or not isinstance(value[0], int | float) or isinstance(value[0], bool):
        raise PrometheusError("Prometheus' answer: a series without a [time, \"value\"] pair")
    try:
        number = float(value[1])
    except ValueError:
        raise PrometheusError("Prometheus' answer: a value that is not a number") from None
    return Series(metric, number)


def fetch_results(prom: Prometheus, sent: Mapping[str, str], at: float) \
        -> dict[str, list[Series]]:
    """Every query's answer, all at the same time `at` (one consistent picture)."""
    return {name: prom.query(promql, at) for name, promql in sent.items()}


# ------------------------------------------------------------------------- workloads

_DEPLOYMENT_POD = re.compile(r"^(.+)-[a-z0-9]{6,10}-[a-z0-9]{5}$")
_STATEFUL_POD = re.compile(r"^(.+)-(?:0|[1-9][0-9]*)$")
_SHORT_SUFFIX_POD = re.compile(r"^(.+)-[a-z0-9]{5}$")
_REPLICASET = re.compile(r"^(.+)-[a-z0-9]{6,10}$")
_POD_UID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
NAME_GUESS = "workload from the pod name: a guess"
REPLICASET_GUESS = "Deployment from the ReplicaSet name: a guess"
NO_OWNER = "<none>"      # kube-state-metrics' owner of a pod nothing owns


@record(frozen=True)
class Endpoint:
    """A node of the map: a workload, a node's host, a user's sockets on a node, a named
    service, or an address nobody in the cluster owns."""
    id: str
    kind: str                  # Deployment, StatefulSet, ..., Pod, node, user, netns, service,
    name: str                  # external, address
    namespace: str | None = None
    inferred: str | None = None      # why this is a guess; None: known


def _workload(kind: str, namespace: str, name: str, inferred: str | None = None) -> Endpoint:
    return Endpoint(f"{kind}:{namespace}/{name}", kind, name, namespace, inferred)


def workload_from_name(namespace: str, pod: str) -> Endpoint:
    """What a pod's name says of its workload: always a guess (a bare pod may be named
    anything), except when it says nothing (the pod is its own workload)."""
    for pattern, kind in ((_DEPLOYMENT_POD, "Deployment"), (_STATEFUL_POD, "StatefulSet"),
                          (_SHORT_SUFFIX_POD, "DaemonSet-or-Job")):
        found = pattern.fullmatch(pod)
        if found:
            return _workload(kind, namespace, found.group(1), NAME_GUESS)
    return _workload("Pod", namespace, pod)


@record
class Owners:
    """kube-state-metrics' owners: (namespace, pod) and (namespace, replicaset) -> (kind,
    name)."""
    pods: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    replicasets: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)

    @classmethod
    def of(cls, pod_rows: Iterable[Series], rs_rows: Iterable[Series]) -> Owners:
        owners = cls()
        for rows, table, key in ((pod_rows, owners.pods, "pod"),
                                 (rs_rows, owners.replicasets, "replicaset")):
            # sorted, with a real owner before <none>: one answer whatever the order
            for row in sorted(rows, key=lambda r: (r.labels.get("owner_kind") == NO_OWNER,
                                                   sorted(r.labels.items()))):
                ns, name = row.labels.get("namespace", ""), row.labels.get(key, "")
                kind, owner = row.labels.get("owner_kind", ""), row.labels.get("owner_name", "")
                if ns and name and kind:
                    table.setdefault((ns, name), (kind, owner))
        return owners

    def workload(self, namespace: str, pod: str) -> Endpoint:
        if not namespace or _POD_UID.fullmatch(pod):     # a pod the agent knew by uid only
            return _workload("Pod", namespace, pod)
        owner = self.pods.get((namespace, pod))
        if owner is None:
            return workload_from_name(namespace, pod)
        kind, name = owner
        if kind == NO_OWNER or not name:
            return _workload("Pod", namespace, pod)
        if kind == "Node":      # a static pod: its mirror is named <name>-<node>
            base = pod[:-len(name) - 1] if pod.endswith(f"-{name}") else pod
            return _workload("StaticPod", namespace, base)
        if kind == "ReplicaSet":
            return self._replicaset(namespace, name)
        return _workload(kind, namespace, name)

    def _replicaset(self, namespace: str, rs: str) -> Endpoint:
        owner = self.replicasets.get((namespace, rs))
        if owner is not None:
            kind, name = owner
            if kind == NO_OWNER or not name:
                return _workload("ReplicaSet", namespace, rs)
            return _workload(kind, namespace, name)
        found = _REPLICASET.fullmatch(rs)
        if found:
            return _workload("Deployment", namespace, found.group(1), REPLICASET_GUESS)
        return _workload("ReplicaSet", namespace, rs)


# ------------------------------------------------------------------------- addresses

def normal_address(text: str) -> str:
    """One spelling per address: ::ffff:10.0.0.5 is 10.0.0.5 (a dual-stack socket's peer),
    IPv6 compressed. Not an address: the text as it is."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return text
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False


@record(frozen=True, order=True)
class Place:
    """Where a socket is on one node: a pod, the host, or another namespace."""
    node: str
    kind: str                  # pod | host | netns
    namespace: str = ""
    pod: str = ""
    netns: str = ""


def _netns_name(text: str) -> str:
    return text if text.startswith("netns:") else f"netns:{text}"


def address_book(rows: Iterable[Series]) -> dict[str, list[Place]]:
    """address -> the places that held it in the window (nsnet_address_info)."""
    book: dict[str, set[Place]] = defaultdict(set)
    for row in rows:
        lab = row.labels
        node, addr, kind = lab.get("node", ""), lab.get("address", ""), lab.get("kind", "")
        if not node or not addr:
            continue
        if kind == "pod" and lab.get("pod"):
            place = Place(node, "pod", lab.get("namespace", ""), lab["pod"])
        elif kind == "host":
            place = Place(node, "host")     # hostNetwork pods share it: never one of them
        else:
            place = Place(node, "netns", netns=_netns_name(lab.get("netns", "")))
        book[normal_address(addr)].add(place)
    return {addr: sorted(places) for addr, places in book.items()}


# ---------------------------------------------------------------------------- the join

@record
class EdgeSeries:
    """One edge of one node, its three queries joined."""
    labels: dict[str, str]
    port: int
    evidence: str
    direction_inferred: bool
    last_seen: float = 0.0
    peak: float = 0.0
    open: float = 0.0
    opened: float = 0.0

    @property
    def node(self) -> str:
        return self.labels["node"]

    @property
    def peer(self) -> str:
        return normal_address(self.labels["peer"])

    @property
    def guess(self) -> bool:
        return is_guess(self.evidence) or self.direction_inferred

    def place(self) -> Place:
        lab = self.labels
        if lab["pod"]:
            return Place(self.node, "pod", lab["namespace"], lab["pod"])
        if lab["netns"] in ("", "host"):
            return Place(self.node, "host")
        return Place(self.node, "netns", netns=_netns_name(lab["netns"]))


@record
class MapEdge:
    """Source -> destination on one protocol and port, summed over its series."""
    source: str
    destination: str
    proto: str
    port: int
    via: set[str] = field(default_factory=set)
    open: float = 0.0
    peak: float = 0.0
    opened: float = 0.0
    last_seen: float = 0.0
    nodes: set[str] = field(default_factory=set)
    crossings: set[bool | None] = field(default_factory=set)
    evidence: set[str] = field(default_factory=set)
    guess: bool = True              # every series of it a guess
    seen_from: set[str] = field(default_factory=set)    # client (outbound), server (inbound)
    confirmed: bool = False         # an outbound edge the server's agent saw too
    series: int = 0


@record
class Join:
    """What build_map keeps while it joins."""
    owners: Owners
    addresses: dict[str, list[Place]]
    services: ServiceMap
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    pods: dict[str, set[tuple[str, str, str]]] = field(default_factory=lambda: defaultdict(set))
    edges: dict[tuple[str, str, str, int], MapEdge] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    ambiguous: set[str] = field(default_factory=set)

    def endpoint(self, ep: Endpoint) -> str:
        known = self.endpoints.get(ep.id)
        # a workload some pod of which is known (not guessed) is known
        if known is None or (known.inferred and not ep.inferred):
            self.endpoints[ep.id] = ep
        return ep.id

    def place_endpoint(self, place: Place) -> Endpoint:
        """A place as a destination (or a client found by its address): a pod's workload,
        a node's host, a namespace of a node."""
        if place.kind == "pod":
            return self.owners.workload(place.namespace, place.pod)
        if place.kind == "host":
            return Endpoint(f"node:{place.node}", "node", place.node)
        return Endpoint(f"{place.netns}@{place.node}", "netns", place.netns)

    def of_place(self, place: Place) -> str:
        """The place's endpoint, in the map (with the pod, for a workload)."""
        ep = self.place_endpoint(place)
        if place.kind == "pod":
            self.pods[ep.id].add((place.node, place.namespace, place.pod))
        return self.endpoint(ep)

    def source(self, s: EdgeSeries) -> str:
        """Who opened an outbound edge: a pod's workload, else its user on that node."""
        place, user = s.place(), s.labels["user"]
        if place.kind == "pod" or not user:
            return self.of_place(place)
        return self.endpoint(Endpoint(f"user:{user}@{place.node}", "user", user))

    def owner_of(self, addr: str, from_node: str) -> Place | None:
        """Who held `addr` in the window: an address of the asking node is its own (routed
        locally: 172.17.0.1 is on every node with docker); else the one place that held
        it; several: None (said once as a warning)."""
        places = self.addresses.get(addr, [])
        local = [p for p in places if p.node == from_node]
        places = local or places
        if len({self.place_endpoint(p).id for p in places}) > 1:
            if addr not in self.ambiguous:
                self.ambiguous.add(addr)
                self.warnings.append(f"{addr} was held by several places in the window "
                                     f"({', '.join(_place_text(p) for p in places)}): "
                                     "shown as an address")
            return None
        return places[0] if places else None

    def unowned(self, addr: str, port: int, agent_service: str) -> str:
        """A peer no agent owns: the operator's name for it, else the address."""
        name = self.services.name(addr, port) or agent_service
        if name:
            return self.endpoint(Endpoint(f"service:{name}", "service", name))
        shown = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
        return self.endpoint(Endpoint(shown, "external", shown))


def _place_text(p: Place) -> str:
    what = f"pod {p.namespace}/{p.pod}" if p.kind == "pod" else \
        "the host" if p.kind == "host" else p.netns
    return f"{what} on {p.node}"


def _int_port(text: str) -> int | None:
    if text.isascii() and text.isdigit() and int(text) <= 65535:
        return int(text)
    return None


def _identity(labels: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(labels.get(name, "") for name in IDENTITY)


def edge_series(results: Mapping[str, Sequence[Series]], seen_after: float | None = None) \
        -> tuple[list[EdgeSeries], dict]:
    """The edges of every node, their queries joined by identity; and what was skipped:
    {"overflow": {node: series}, "malformed": n}. seen_after: leave out the edges last seen
    before it (an agent exports every edge it remembers, for --retention: a series in the
    window is not an edge seen in it)."""
    found: dict[tuple[str, ...], EdgeSeries] = {}
    overflow: dict[str, int] = defaultdict(int)
    malformed = 0
    for row in results.get("edges", ()):
        labels = {name: row.labels.get(name, "") for name in IDENTITY}
        if labels["peer"] == OVERFLOW:
            overflow[labels["node"]] += 1
            continue
        port = _int_port(labels["port"])
        if port is None or not labels["node"] or labels["direction"] not in (
                "outbound", "inbound") or not labels["peer"] or not math.isfinite(row.value):
            malformed += 1
            continue
        evidence = row.labels.get("evidence", "unknown")
        inferred = row.labels.get("direction_inferred") == "true"
        key = _identity(labels)
        seen = found.get(key)
        if seen is None:
            found[key] = EdgeSeries(labels, port, evidence, inferred, row.value)
            continue
        # the evidence changed in the window: the strongest, as the agent keeps it
        if STRENGTH.get(evidence, 99) < STRENGTH.get(seen.evidence, 99):
            seen.evidence = evidence
        seen.direction_inferred = seen.direction_inferred and inferred
        seen.last_seen = max(seen.last_seen, row.value)
    if seen_after is not None:
        found = {k: s for k, s in found.items() if s.last_seen >= seen_after}
    for name in ("peak", "open", "opened"):
        for row in results.get(name, ()):
            match = found.get(_identity(row.labels))
            if match is not None and math.isfinite(row.value):
                setattr(match, name, max(row.value, 0.0))
    return sorted(found.values(), key=lambda s: _identity(s.labels)), \
        {"overflow": dict(sorted(overflow.items())), "malformed": malformed}


def _add(join: Join, source: str, destination: str, s: EdgeSeries,
         crossing: bool | None) -> MapEdge:
    key = (source, destination, s.labels["proto"], s.port)
    edge = join.edges.get(key)
    if edge is None:
        edge = join.edges[key] = MapEdge(source, destination, s.labels["proto"], s.port)
    edge.open += s.open
    edge.peak += s.peak
    edge.opened += s.opened
    edge.last_seen = max(edge.last_seen, s.last_seen)
    edge.crossings.add(crossing)
    edge.evidence.add(s.evidence)
    edge.guess = edge.guess and s.guess
    edge.series += 1
    return edge


def _crossing(a: Place | None, b: Place | None) -> bool | None:
    return None if a is None or b is None else a.node != b.node


Meeting = tuple[Place, Place, str, int]    # client, server, proto, port: one connection's ends


def _outbound(join: Join, s: EdgeSeries) -> tuple[Meeting | None, MapEdge]:
    """An outbound edge into the map; the ends of its connections, when both are known."""
    client = s.place()
    if _is_loopback(s.peer):
        server: Place | None = client        # inside its own namespace
    else:
        server = join.owner_of(s.peer, s.node)
    destination = join.of_place(server) if server is not None else \
        join.unowned(s.peer, s.port, s.labels["service"])
    edge = _add(join, join.source(s), destination, s, _crossing(client, server))
    edge.seen_from.add("client")
    edge.nodes.add(s.node)
    if server is not None:
        edge.nodes.add(server.node)
    if s.labels["via"]:
        edge.via.add(s.labels["via"])
    return ((client, server, s.labels["proto"], s.port) if server is not None else None), edge


def _inbound(join: Join, s: EdgeSeries, meetings: dict[Meeting, MapEdge]) -> None:
    """An inbound edge: the server's view of connections. One some client's agent saw too
    confirms that edge; the others (a client without an agent, a connection its agent
    missed) are added, from the client's address."""
    server = s.place()
    client = server if _is_loopback(s.peer) else join.owner_of(s.peer, s.node)
    seen = meetings.get((client, server, s.labels["proto"], s.port)) \
        if client is not None else None
    if seen is not None:
        seen.confirmed = True
        return
    if client is not None:
        source = join.of_place(client)
    else:
        source = join.endpoint(Endpoint(f"address:{s.peer}", "address", s.peer))
    edge = _add(join, source, join.of_place(server), s, _crossing(client, server))
    edge.seen_from.add("server")
    edge.nodes.add(s.node)
    if client is not None:
        edge.nodes.add(client.node)


def build_map(results: Mapping[str, Sequence[Series]], services: ServiceMap,
              seen_after: float | None = None, meta: Mapping[str, object] | None = None) -> dict:
    """The cluster map from the queries' answers (QUERIES' names): a JSON-ready document.
    Pure. seen_after: the window's start (edges last seen before it are left out); `meta`
    (the Prometheus URL, the time, the window, the queries) is copied in."""
    owners = Owners.of(results.get("pod_owners", ()), results.get("replicaset_owners", ()))
    join = Join(owners, address_book(results.get("addresses", ())), services)
    series, skipped = edge_series(results, seen_after)
    meetings: dict[Meeting, MapEdge] = {}
    for s in series:
        if s.labels["direction"] == "outbound":
            met, edge = _outbound(join, s)
            if met is not None:
                meetings[met] = edge
    for s in series:
        if s.labels["direction"] == "inbound":
            _inbound(join, s, meetings)
    return _document(join, series, skipped, bool(owners.pods), meta or {})


def _count(value: float) -> int:
    return int(round(value))


def _edge_doc(e: MapEdge) -> dict:
    crossing = True if True in e.crossings else (False if e.crossings == {False} else None)
    evidence = sorted(e.evidence)
    return {"source": e.source, "destination": e.destination, "proto": e.proto,
            "port": e.port, "via": sorted(e.via),
            "open": _count(e.open), "peak": _count(e.peak), "opened": _count(e.opened),
            "last_seen": e.last_seen or None, "nodes": sorted(e.nodes),
            "cross_node": crossing, "evidence": evidence, "guess": e.guess,
            "seen_from": sorted(e.seen_from), "confirmed_by_server": e.confirmed,
            "series": e.series}


def _document(join: Join, series: list[EdgeSeries], skipped: dict, have_owners: bool,
              meta: Mapping[str, object]) -> dict:
    warnings = list(join.warnings)
    for node, count in skipped["overflow"].items():
        warnings.append(f"node {node}: {count} overflow series (edges folded by the agent's "
                        "--max-series cap) are not in the map")
    if skipped["malformed"]:
        warnings.append(f"{skipped['malformed']} edge series without a node, a direction, a "
                        "peer or a port were left out")
    if series and not have_owners:
        warnings.append("no kube_pod_owner series (kube-state-metrics): every workload is "
                        "inferred from its pods' names")
    endpoints = [{"id": ep.id, "kind": ep.kind, "namespace": ep.namespace, "name": ep.name,
                  "inferred": ep.inferred,
                  "pods": [{"node": n, "namespace": ns, "pod": p}
                           for n, ns, p in sorted(join.pods.get(ep.id, ()))]}
                 for ep in sorted(join.endpoints.values(), key=lambda ep: ep.id)]
    edges = [_edge_doc(e) for _, e in sorted(join.edges.items())]
    return {"schema": SCHEMA, "view": "cluster", **meta, "endpoints": endpoints,
            "edges": edges, "warnings": warnings,
            "stats": {"edge_series": len(series), "endpoints": len(endpoints),
                      "edges": len(edges), "overflow_series": sum(skipped["overflow"].values()),
                      "malformed_series": skipped["malformed"]}}


def cluster_map(prom: Prometheus, since: str, at: float, services: ServiceMap) -> dict:
    """Ask Prometheus, join: the map at `at` over the window `since`."""
    sent = queries(since)
    results = fetch_results(prom, sent, at)
    return build_map(results, services, at - duration_seconds(since),
                     {"prometheus": prom.url, "time": at, "since": since, "queries": sent})


# --------------------------------------------------------------------------- renderers

LEGEND = ("?: a guess (a workload from its pod's name, a user among a namespace's owners, a "
          "direction from the ports) | OPEN: connections open now | PEAK: the sum of each "
          "series' highest sampled open connections in the window (at most the peak) | "
          "OPENED: connections opened in the window (Prometheus' increase(), extrapolated) | "
          "X-NODE: from one node to another | SEEN: client (the source's agent), server "
          "(the destination's), both")


def endpoint_label(ep: Mapping[str, object]) -> str:
    """How an endpoint is shown: 'Deployment shop/web ?', 'node n1', 'user alice@n1'."""
    kind, name, ns = str(ep["kind"]), str(ep["name"]), ep.get("namespace")
    if ns is not None:
        text = f"{kind} {ns}/{name}" if ns else f"{kind} {name}"
    elif kind in ("external", "address"):
        text = name
    else:
        text = str(ep["id"]).replace(":", " ", 1)
    return text + (" ?" if ep.get("inferred") else "")


def _labels(doc: Mapping) -> dict[str, str]:
    return {ep["id"]: endpoint_label(ep) for ep in doc["endpoints"]}


def _cross(value: bool | None) -> str:
    return "?" if value is None else "yes" if value else "no"


def _seen(edge: Mapping) -> str:
    seen = edge["seen_from"]
    if edge["confirmed_by_server"] or len(seen) == 2:
        return "both"
    return seen[0] if seen else ""


def render_table(doc: Mapping, width: int | None, color: bool) -> str:
    from .table import Column, render_table

    if not doc["edges"]:
        return f"no dependency edges in the last {doc.get('since', '?')}"
    names = _labels(doc)
    columns = [
        Column("FROM", lambda e: names.get(e["source"], e["source"]), wrap=True),
        Column("TO", lambda e: names.get(e["destination"], e["destination"]), wrap=True),
        Column("PROTO", "proto"), Column("PORT", "port", align="right"),
        Column("VIA", lambda e: ",".join(e["via"]), priority=2, wrap=True),
        Column("OPEN", "open", align="right"), Column("PEAK", "peak", align="right"),
        Column("OPENED", "opened", align="right", priority=3),
        Column("X-NODE", lambda e: _cross(e["cross_node"]), priority=4),
        Column("SEEN", _seen, priority=1),
        Column("KNOWN-BY", lambda e: ",".join(e["evidence"]) + (" ?" if e["guess"] else ""),
               priority=5, wrap=True),
        Column("NODES", lambda e: ",".join(e["nodes"]), priority=0, wrap=True),
    ]
    from .table import wrap_text

    legend = [LEGEND] if width is None else wrap_text(LEGEND, max(width, 20))
    return "\n".join([render_table(columns, doc["edges"], width=width, color=color), "",
                      *legend])


def _edge_text(edge: Mapping) -> str:
    """'tcp/5432 x3': the protocol, port and the connections open now; 'via ...'; '?'."""
    text = f"{edge['proto']}/{edge['port']} x{edge['open']}"
    if edge["via"]:
        text += " via " + ",".join(edge["via"])
    return text + (" ?" if edge["guess"] else "")


def to_dot(doc: Mapping) -> str:
    from .graph import FONT, _label_text

    def quote(text: str) -> str:
        return '"' + _label_text(text).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ["digraph nsnet_cluster {", "  rankdir=LR;", f'  graph [fontname="{FONT}"];',
             f'  node [shape=box, fontname="{FONT}"];', f'  edge [fontname="{FONT}"];']
    for ep in doc["endpoints"]:
        shape = "cylinder" if ep["kind"] in ("service", "external", "address") else "box"
        style = "dashed,rounded" if ep["inferred"] else "rounded"
        lines.append(f"  {quote(ep['id'])} [label={quote(endpoint_label(ep))}, "
                     f"shape={shape}, style=\"{style}\"];")
    for e in doc["edges"]:
        style = ", style=dashed" if e["guess"] else ""
        lines.append(f"  {quote(e['source'])} -> {quote(e['destination'])} "
                     f"[label={quote(_edge_text(e))}{style}];")
    lines.append(f"  legend [shape=note, label={quote(LEGEND)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_mermaid(doc: Mapping) -> str:
    from .graph import _label_text

    def label(text: str) -> str:
        # Mermaid's quoted labels take HTML entities; quotes and brackets would end them
        return re.sub(r'["<>#&|]', lambda m: f"#{ord(m.group())};", _label_text(text))

    ids = {ep["id"]: f"n{i}" for i, ep in enumerate(doc["endpoints"])}
    lines = ["flowchart LR"]
    for ep in doc["endpoints"]:
        if ep["kind"] in ("service", "external", "address"):
            lines.append(f'  {ids[ep["id"]]}[("{label(endpoint_label(ep))}")]')
        else:
            lines.append(f'  {ids[ep["id"]]}("{label(endpoint_label(ep))}")')
    for e in doc["edges"]:
        arrow = "-.->" if e["guess"] else "-->"
        lines.append(f'  {ids[e["source"]]} {arrow}|"{label(_edge_text(e))}"| '
                     f'{ids[e["destination"]]}')
    lines.append(f'  legend["{label(LEGEND)}"]')
    return "\n".join(lines) + "\n"
