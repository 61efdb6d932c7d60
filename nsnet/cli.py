"""Command line: parse arguments, take the snapshot, print it. Errors become one line here."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Optional, Sequence

from . import __version__, report, views
from .netparse import TCP_STATES
from .procfs import NsnetError
from .sanitize import printable
from .edges import EdgeState, observe
from .graph import FORMATS, render as render_graph
from .history import by_user_history, deps_view, node_name, rows_from_store
from .services import load_services
from .store import Store, parse_since
from .table import terminal_width, use_color

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 70
KNOWN_STATES = sorted(set(TCP_STATES.values()) | {"UNCONN"})


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse prints a usage block and exits; we want one line and our own exit."""

    def error(self, message: str) -> None:   # type: ignore[override]
        raise UsageError(f"{message} (see 'nsnet {self.prog.split()[-1]} --help')"
                         if " " in self.prog else f"{message} (see 'nsnet --help')")


def _state(text: str) -> str:
    state = views.normalize_state(text)
    if state not in KNOWN_STATES:
        raise argparse.ArgumentTypeError(
            f"unknown state {text!r}; one of {', '.join(KNOWN_STATES)}")
    return state


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return int(text)


def _positive(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    return int(text)


def _listen_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"not ADDR:PORT: {text!r}")
    return (host.strip("[]") or "0.0.0.0"), int(port)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.1 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"not a number of seconds in 0.1..86400: {text!r}")
    return value


def _duration(text: str) -> float:
    from .store import parse_since
    try:
        return -parse_since(text, now=0.0)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _fraction(text: str) -> float:
    try:
        value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    except ValueError:
        value = -1.0
    if not 0.001 <= value <= 64:
        raise argparse.ArgumentTypeError(f"not a CPU fraction (0.05, 5%, 2 cores = 2): {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON document (schema nsnet/1)")
    common.add_argument("--proc", default=os.environ.get("NSNET_PROC", "/proc"), metavar="PATH",
                        help="procfs to read (default: $NSNET_PROC or /proc; e.g. /host/proc in a container)")
    common.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                        help="colour (auto: only on a terminal; NO_COLOR always disables it)")
    common.add_argument("--resolve", action="store_true", help="show service names for ports")
    common.add_argument("--sandbox-command", action="append", metavar="NAME",
                        help="command name of namespace holders never counted as owners "
                             "(repeatable; default: pause)")
    common.add_argument("--source", choices=("proc", "netlink", "pidfd", "auto"), default="proc",
                        help="where sockets are read: /proc tables (default, needs no "
                             "privilege), sock_diag netlink, pidfd per-socket queries, or "
                             "the fastest the privileges allow")
    common.add_argument("--no-enter", action="store_true",
                        help="do not setns into namespaces pinned only by a bind mount")
    common.add_argument("--services", default=os.environ.get("NSNET_SERVICES") or None,
                        metavar="FILE",
                        help="TOML file naming endpoints (CIDRs, ip:port) as services, used in "
                             "every view (default: $NSNET_SERVICES)")
    common.add_argument("--host-root", default=os.environ.get("NSNET_HOST_ROOT", "/"),
                        metavar="PATH",
                        help="where the node's /var/log/pods and /var/log/containers are, for "
                             "pod and container names (default: $NSNET_HOST_ROOT or /; e.g. "
                             "/host in the DaemonSet)")

    parser = _Parser(prog="nsnet", description="Every network namespace on this machine, "
                     "its sockets, and the pids and users behind them.")
    parser.add_argument("--version", action="version", version=f"nsnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    by_ns = sub.add_parser("by-namespace", parents=[common],
                           help="every namespace: processes, listeners, connections")
    by_ns.add_argument("--netns", type=_positive, metavar="INODE", help="only this namespace")
    by_user = sub.add_parser("by-user", parents=[common], help="the dependency view: who talks to whom")
    by_user.add_argument("--user", metavar="NAME|UID", help="only this user")
    by_user.add_argument("--since", metavar="AGE",
                         help="from the agent's history (--db) instead of a live snapshot: "
                              "edges seen in the last AGE (30m, 24h, 7d)")
    by_user.add_argument("--db", default=os.environ.get("NSNET_DB") or None, metavar="PATH",
                         help="the history 'nsnet serve --db' writes (default: $NSNET_DB)")
    deps = sub.add_parser("deps", parents=[common],
                          help="dependency edges: user/pod -> service, live or from history")
    graph = sub.add_parser("graph", parents=[common],
                           help="the dependency map as Graphviz dot or Mermaid")
    graph.add_argument("--format", choices=FORMATS, default="dot", help="default: dot")
    for p in (deps, graph):
        p.add_argument("--since", metavar="AGE",
                       help="edges seen in the last AGE (30m, 24h, 7d); needs --db")
        p.add_argument("--db", default=os.environ.get("NSNET_DB") or None, metavar="PATH",
                       help="read the agent's history instead of taking a snapshot "
                            "(default: $NSNET_DB)")
        p.add_argument("--user", metavar="NAME|UID", help="only this user's edges")
    by_pod = sub.add_parser("by-pod", parents=[common],
                            help="Kubernetes pods: containers, owners, listeners, dependencies")
    by_pod.add_argument("--pod", metavar="NS/NAME|UID", help="only this pod")
    serve = sub.add_parser("serve", parents=[common],
                           help="the node agent: sample periodically, serve JSON over HTTP")
    serve.add_argument("--listen", type=_listen_address, default=("0.0.0.0", 9810),
                       metavar="ADDR:PORT", help="HTTP address (default 0.0.0.0:9810)")
    serve.add_argument("--interval", type=_seconds, default=15.0, metavar="SECONDS",
                       help="time between samples (default 15)")
    serve.add_argument("--expose-cmdlines", action="store_true",
                       help="serve command lines (off: the endpoint sees every tenant)")
    serve.add_argument("--db", default=os.environ.get("NSNET_DB") or None, metavar="PATH",
                       help="SQLite history of dependency edges (default: $NSNET_DB; none: "
                            "memory only)")
    serve.add_argument("--retention", type=_duration, default=30 * 86400.0, metavar="AGE",
                       help="forget edges not seen for this long (default 30d)")
    serve.add_argument("--node-name", default=None, metavar="NAME",
                       help="this node's name in edges and metrics (default: $NODE_NAME, "
                            "else the hostname)")
    serve.add_argument("--max-cpu", type=_fraction, default=0.05, metavar="FRACTION",
                       help="CPU budget, a fraction of one core (default 0.05 = 5%%)")
    serve.add_argument("--events", choices=("auto", "off"), default="auto",
                       help="TCP destroy events between samples (auto: when CAP_NET_ADMIN and "
                            "CAP_SYS_ADMIN allow)")
    serve.add_argument("--max-series", type=_positive, default=5000, metavar="N",
                       help="at most N edge series in /metrics; the rest are folded into "
                            "peer=\"__overflow__\" (default 5000)")
    watch = sub.add_parser("watch", parents=[common],
                           help="live: dependency edges, redrawn after every sample")
    watch.add_argument("--interval", type=_seconds, default=2.0, metavar="SECONDS",
                       help="time between samples (default 2)")
    watch.add_argument("--max-cpu", type=_fraction, default=0.5, metavar="FRACTION",
                       help="CPU budget, a fraction of one core (default 0.5)")
    watch.add_argument("--events", choices=("auto", "off"), default="auto",
                       help="TCP destroy events between samples (needs CAP_NET_ADMIN and "
                            "CAP_SYS_ADMIN)")
    socks = sub.add_parser("sockets", parents=[common], help="one row per socket, like ss -tuanp for the node")
    socks.add_argument("--ndjson", action="store_true", help="stream one JSON object per line")
    for proto in ("tcp", "udp", "unix", "raw"):
        socks.add_argument(f"--{proto}", action="store_true", help=f"{proto} sockets (combinable)")
    socks.add_argument("--listening", "-l", action="store_true", help="listening sockets only")
    socks.add_argument("--state", type=_state, metavar="S", help="only this state (LISTEN, ESTABLISHED, time-wait, ...)")
    socks.add_argument("--port", type=_port, metavar="N", help="local or remote port N")
    socks.add_argument("--pid", type=_positive, metavar="N", help="sockets held by pid N")
    socks.add_argument("--netns", type=_positive, metavar="INODE", help="sockets of this namespace")
    return parser


def _emit_json(doc: dict, out) -> None:
    # One line, no indent: only then does json use its C encoder (3x faster on a busy node;
    # pipe through `jq .` to read it). ASCII: no raw control bytes reach a terminal.
    out.write(json.dumps(doc, ensure_ascii=True))
    out.write("\n")


def _emit_ndjson(doc: dict, out) -> None:
    for ns in doc["namespaces"]:
        out.write(json.dumps({"schema": doc["schema"], "type": "namespace", **ns}) + "\n")
    for sock in doc["sockets"]:
        out.write(json.dumps({"schema": doc["schema"], "type": "socket", **sock}) + "\n")
    out.write(json.dumps({"schema": doc["schema"], "type": "stats", "stats": doc["stats"]}) + "\n")


def run(args: argparse.Namespace, out, err) -> int:
    from .snapshot import take_snapshot   # late: `--help` must work without /proc

    only_uid: Optional[int] = None
    if getattr(args, "user", None) is not None:
        try:
            only_uid = views.resolve_user(args.user)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    services = load_services(args.services)
    if args.command == "serve":
        from .serve import serve
        return serve(args, services, err)
    if args.command == "watch":
        from .watch import watch
        return watch(args, services, out, err)
    since: Optional[float] = None
    if getattr(args, "since", None) is not None:
        try:
            since = parse_since(args.since)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if not args.db:
            raise UsageError("--since reads the agent's history: give --db PATH "
                             "(or set NSNET_DB)")
    if args.command in ("deps", "graph") or (args.command == "by-user" and args.db
                                             and since is not None):
        if args.db:
            doc = _history(args.db, since, only_uid, services)
        else:
            doc = _live_edges(args, services, only_uid, err)
        return _print_edges(args, doc, out)
    snap = take_snapshot(args.proc, sandbox_commands=args.sandbox_command or ("pause",),
                         enter_pinned=not args.no_enter, source=args.source,
                         host_root=args.host_root)
    snap.services = services
    for line in snap.stats.warnings():
        err.write(f"nsnet: warning: {printable(line)}\n")
    if args.command == "sockets":
        protos = frozenset(p for p in ("tcp", "udp", "unix", "raw") if getattr(args, p))
        keep = views.SocketFilter(protos, args.listening, args.state, args.port, args.pid, args.netns)
        doc = views.sockets_view(snap, keep)
    elif args.command == "by-namespace":
        doc = views.by_namespace_view(snap, args.netns)
    elif args.command == "by-pod":
        only_pod = None
        if args.pod is not None:
            only_pod = views.resolve_pod(args.pod, snap)
            if only_pod is None:
                raise UsageError(f"no pod {args.pod!r} on this node (give NAMESPACE/NAME or "
                                 "the pod's uid; see 'nsnet by-pod')")
        doc = views.by_pod_view(snap, only_pod)
    else:
        doc = views.by_user_view(snap, only_uid)
    if getattr(args, "ndjson", False):
        _emit_ndjson(doc, out)
    elif args.json:
        _emit_json(doc, out)
    else:
        color = use_color(out, args.color) and not os.environ.get("NO_COLOR")
        r = report.Renderer(terminal_width(out), color, args.resolve)
        render = {"sockets": report.render_sockets, "by-namespace": report.render_by_namespace,
                  "by-user": report.render_by_user, "by-pod": report.render_by_pod}[args.command]
        text = render(doc, r)
        out.write(text + ("\n" if text else ""))
    return EXIT_OK if not snap.stats.namespaces_unread or snap.sockets else EXIT_ERROR


def _history(db: str, since: Optional[float], uid: Optional[int], services) -> dict:
    store = Store(db, readonly=True)
    try:
        rows = rows_from_store(store.edges(since=since, uid=uid))
    finally:
        store.close()
    return deps_view(rows, services, since, f"history {db}")


def _live_edges(args, services, uid: Optional[int], err) -> dict:
    from .snapshot import take_snapshot

    snap = take_snapshot(args.proc, sandbox_commands=args.sandbox_command or ("pause",),
                         enter_pinned=not args.no_enter, source=args.source,
                         host_root=args.host_root)
    for line in snap.stats.warnings():
        err.write(f"nsnet: warning: {printable(line)}\n")
    now = round(time.time(), 3)
    rows = [(node_name(None), key, EdgeState(now, now, 1, count, count))
            for key, count in observe(snap).items() if uid is None or key.uid == uid]
    return deps_view(rows, services, None, "snapshot")


def _print_edges(args, doc: dict, out) -> int:
    if args.command == "graph":
        out.write(render_graph(doc["edges"], args.format))
    elif args.command == "by-user":
        doc = by_user_history(doc)
        if args.json:
            _emit_json(doc, out)
        else:
            out.write(report.render_by_user_history(doc) + "\n")
    elif args.json:
        _emit_json(doc, out)
    else:
        color = use_color(out, args.color) and not os.environ.get("NO_COLOR")
        r = report.Renderer(terminal_width(out), color, args.resolve)
        text = report.render_deps(doc, r)
        out.write(text + ("\n" if text else ""))
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    out, err = sys.stdout, sys.stderr
    try:
        args = build_parser().parse_args(argv)
        return run(args, out, err)
    except UsageError as exc:
        err.write(f"nsnet: error: {printable(str(exc))}\n")
        return EXIT_USAGE
    except NsnetError as exc:
        err.write(f"nsnet: error: {printable(str(exc))}\n")
        return EXIT_ERROR
    except BrokenPipeError:
        # the reader went away (| head): not an error; silence the flush at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        return 130
    except Exception as exc:   # the last boundary: never a traceback unless asked for
        if os.environ.get("NSNET_DEBUG"):
            raise
        err.write(f"nsnet: internal error: {type(exc).__name__}: {printable(str(exc))} "
                  "(set NSNET_DEBUG=1 for a traceback)\n")
        return EXIT_INTERNAL
