"""Command line: parse arguments and option environment variables into options objects, run
the command, print its result. Errors become one line here.

This is the only module that sees argparse or reads an option variable (NSNET_PROC,
NSNET_HOST_ROOT, NSNET_SERVICES, NSNET_DB, NSNET_PROMETHEUS, NODE_NAME, NO_COLOR, TERM, COLUMNS,
NSNET_DEBUG):
everything below it gets nsnet.options objects.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, TextIO, cast

from . import __version__
from .errors import NsnetError, UsageError
from .options import (
    CLUSTER_FORMATS,
    GRAPH_FORMATS,
    SOURCES,
    WATCH_SAMPLING,
    AgentOptions,
    ClusterOptions,
    OutputOptions,
    SamplingOptions,
    SnapshotOptions,
    WatchOptions,
)

if TYPE_CHECKING:
    from . import report
    from .model import Namespace, ServiceMap, Snapshot

# What a command needs (the views, the renderers, the sources) is imported when it runs:
# `nsnet --version` and `--help`, and every command's start, pay only for what they use.

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 70
SNAPSHOT, AGENT, CLUSTER = SnapshotOptions(), AgentOptions(), ClusterOptions()


class _Parser(argparse.ArgumentParser):
    """argparse prints a usage block and exits; we want one line and our own exit. The
    epilog (vocabulary, colours, column names) is made when help is shown: it needs the
    renderers, which a command that prints JSON never imports."""

    epilog_of: Callable[[], str] | None = None

    def format_help(self) -> str:
        if self.epilog_of is not None:
            self.epilog = self.epilog_of()
        return super().format_help()

    def error(self, message: str) -> None:   # type: ignore[override]
        raise UsageError(f"{message} (see 'nsnet {self.prog.split()[-1]} --help')"
                         if " " in self.prog else f"{message} (see 'nsnet --help')")


# ------------------------------------------------------------------------ argument types

def _state(text: str) -> str:
    from .netparse import TCP_STATES
    from .views import normalize_state

    state = normalize_state(text)
    known = sorted(set(TCP_STATES.values()) | {"UNCONN"})
    if state not in known:
        raise argparse.ArgumentTypeError(f"unknown state {text!r}; one of {', '.join(known)}")
    return state


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return int(text)


def _positive(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    return int(text)


def _fd_budget(text: str) -> int | None:
    return None if text == "all" else _positive(text)


def _listen_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"not ADDR:PORT: {text!r}")
    return (host.strip("[]") or "0.0.0.0"), int(port)


def _token_file(text: str) -> str:
    # an empty value (an unset variable in a manifest) must not quietly turn auth off
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path: give the token file's path")
    return text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.1 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"not a number of seconds in 0.1..86400: {text!r}")
    return value


def _duration(text: str) -> float:
    from .agent.store import parse_since
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


# ------------------------------------------------------------------------------ parser

def _output_kind(text: str) -> str:
    if text in ("wide", "json", "ndjson"):
        return text
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or not all(n.replace("-", "").replace("_", "").isalnum() for n in names):
        raise argparse.ArgumentTypeError(f"not wide, json, ndjson or COL,COL: {text!r}")
    return ",".join(n.upper().replace("_", "-") for n in names)


def _common(env: Mapping[str, str]) -> tuple[_Parser, _Parser]:
    """The options every command takes: how it prints, and (but `cluster`, which reads no
    node) how the node is read."""
    common = _Parser(add_help=False)
    reading = _Parser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON document (schema nsnet/1)")
    common.add_argument("-o", "--output", type=_output_kind, metavar="wide|json|ndjson|COL,..",
                        help="wide: nothing cut or hidden on a terminal; json: as --json; "
                             "ndjson: one JSON object per line; COL,COL: these columns, "
                             "in every table that has them (the list is below)")
    common.add_argument("--columns", type=_output_kind, metavar="COL,COL",
                        help="these columns, in this order (as -o COL,COL)")
    common.add_argument("-q", "--quiet", action="store_true",
                        help="no warnings about what could not be seen (the exit status and "
                             "--json's stats still say it)")
    common.add_argument("-v", "--verbose", action="store_true",
                        help="one line on stderr: the source and why, the reader threads and "
                             "why, what the snapshot read and how long it took")
    reading.add_argument("--proc", default=env.get("NSNET_PROC", SNAPSHOT.proc), metavar="PATH",
                        help="procfs to read (default: $NSNET_PROC or /proc; e.g. /host/proc in a container)")
    common.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                        help="colour (auto: only on a terminal; NO_COLOR always disables it)")
    common.add_argument("--resolve", action="store_true", help="show service names for ports")
    reading.add_argument("--sandbox-command", action="append", metavar="NAME",
                        help="command name of namespace holders never counted as owners "
                             "(repeatable; default: pause)")
    reading.add_argument("--source", choices=SOURCES, default=SNAPSHOT.source,
                        help="where sockets are read: /proc tables (needs no privilege), "
                             "sock_diag netlink, pidfd per-socket queries, or auto (the "
                             "default): the fastest the privileges allow, which lists "
                             "everything proc lists")
    reading.add_argument("--no-enter", action="store_true",
                        help="do not setns into namespaces pinned only by a bind mount")
    reading.add_argument("--no-conntrack", dest="translations", action="store_false",
                        help="do not read the host's connection-tracking table: connections "
                             "to a Service VIP name the VIP, not the backend reached")
    reading.add_argument("--deadline", type=_seconds, metavar="SECONDS",
                        default=SNAPSHOT.deadline,
                        help="stop walking processes after this many seconds (the agent's "
                             "paced pauses not counted); those left are counted and said "
                             "(default: none)")
    reading.add_argument("--max-fds-per-user", type=_fd_budget, metavar="N|all",
                        default=SNAPSHOT.max_fds_per_user,
                        help="read at most N fd links per uid in one snapshot, so that no "
                             "tenant can make a snapshot arbitrarily long; the rest are "
                             f"counted and said (default: {SNAPSHOT.max_fds_per_user}; all: "
                             "no limit)")
    common.add_argument("--services", default=env.get("NSNET_SERVICES") or None,
                        metavar="FILE",
                        help="TOML file naming endpoints (CIDRs, ip:port) as services, used in "
                             "every view (default: $NSNET_SERVICES)")
    reading.add_argument("--host-root", default=env.get("NSNET_HOST_ROOT", SNAPSHOT.host_root),
                        metavar="PATH",
                        help="where the node's /var/log/pods and /var/log/containers are, for "
                             "pod and container names (default: $NSNET_HOST_ROOT or /; e.g. "
                             "/host in the DaemonSet)")
    return common, reading


def _history_options(p: argparse.ArgumentParser, env: Mapping[str, str], since_help: str) -> None:
    p.add_argument("--since", metavar="AGE", help=since_help)
    p.add_argument("--db", default=env.get("NSNET_DB") or None, metavar="PATH",
                   help="read the agent's history instead of taking a snapshot "
                        "(default: $NSNET_DB)")
    p.add_argument("--user", metavar="NAME|UID", help="only this user")
    p.add_argument("--confirmed", action="store_true",
                   help="only edges whose user is known, not guessed (no namespace-owners "
                        "guess)")
    _traffic_option(p)


def _traffic_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-traffic", dest="traffic", action="store_false",
                   help="do not read TCP_INFO: edges carry no bytes, retransmits or rtt "
                        "(cheaper; the proc source never has them)")


def _sampling_options(p: argparse.ArgumentParser, defaults: SamplingOptions) -> None:
    p.add_argument("--interval", type=_seconds, default=defaults.interval, metavar="SECONDS",
                   help=f"time between samples (default {defaults.interval:g})")
    p.add_argument("--max-cpu", type=_fraction, default=defaults.max_cpu, metavar="FRACTION",
                   help=f"CPU budget, a fraction of one core (default {defaults.max_cpu:g})")
    p.add_argument("--events", choices=("auto", "off"), default="auto",
                   help="TCP destroy events between samples (auto: when CAP_NET_ADMIN and "
                        "CAP_SYS_ADMIN allow)")
    _traffic_option(p)


def _serve_options(serve: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    serve.add_argument("--listen", type=_listen_address, default=AGENT.listen,
                       metavar="ADDR:PORT", help="HTTP address (default 0.0.0.0:9810)")
    serve.add_argument("--expose-cmdlines", action="store_true",
                       help="serve command lines (off: the endpoint sees every tenant)")
    serve.add_argument("--db", default=env.get("NSNET_DB") or None, metavar="PATH",
                       help="SQLite history of dependency edges (default: $NSNET_DB; none: "
                            "memory only)")
    serve.add_argument("--retention", type=_duration, default=AGENT.retention, metavar="AGE",
                       help="forget edges not seen for this long (default 30d)")
    serve.add_argument("--node-name", default=None, metavar="NAME",
                       help="this node's name in edges and metrics (default: $NODE_NAME, "
                            "else the hostname)")
    serve.add_argument("--max-series", type=_positive, default=AGENT.max_series, metavar="N",
                       help="at most N edge series in /metrics; the rest are folded into "
                            f"peer=\"__overflow__\" (default {AGENT.max_series})")
    serve.add_argument("--auth-token-file", type=_token_file, default=AGENT.auth_token_file,
                       metavar="PATH",
                       help="require 'Authorization: Bearer TOKEN' (TOKEN: this file's content, "
                            "re-read when it changes) on every path but /healthz and /readyz")
    serve.add_argument("--in-process", action="store_true",
                       help="take the samples in the agent's own process (default: each in a "
                            "child process that exits, which gives its memory back)")
    _sampling_options(serve, AGENT.sampling)


# One option per socket kind (model.PROTOS, in its order: a unit test holds them equal; the
# CLI does not import the model to build its parser).
KIND_HELP = {
    "tcp": "TCP sockets", "udp": "UDP sockets", "udplite": "UDP-Lite sockets",
    "icmp": "ICMP ping sockets (SOCK_DGRAM, IPPROTO_ICMP/ICMPV6): LOCAL's port is the echo id",
    "raw": "raw IP sockets: LOCAL's port is the IP protocol",
    "mptcp": "MPTCP sockets (the connection; its TCP subflows are listed as tcp)",
    "unix": "unix sockets",
    "packet": "packet sockets (tcpdump, DHCP clients, sniffers): LOCAL is the interface "
              "('*': all) and the ethertype received",
    "netlink": "netlink sockets: LOCAL is the protocol and port id (0: the kernel's)",
    "vsock": "vsock sockets (VM sockets): LOCAL is cid:port ('*': any cid)",
}


def _sockets_options(socks: argparse.ArgumentParser) -> None:
    socks.add_argument("--ndjson", action="store_true", help="stream one JSON object per line")
    kinds = socks.add_argument_group(
        "socket kinds", "combinable; none given: every kind but netlink (the kernel's own\n"
        "in every namespace, a few per daemon)")
    for proto, what in KIND_HELP.items():
        kinds.add_argument(f"--{proto}", action="store_true", help=what)
    kinds.add_argument("--all-kinds", "-A", action="store_true",
                       help="every kind, netlink included")
    detail = socks.add_argument_group(
        "details", "read besides the sockets, at a cost (README: Socket details);\n"
        "each socket's `detail` in the JSON, columns in the tables")
    detail.add_argument("-e", "--extended", action="store_true",
                        help="Recv-Q and Send-Q (a listener: accept queue and backlog), the "
                             "timer, the socket cookie")
    detail.add_argument("-i", "--info", action="store_true",
                        help="TCP internals: rtt, cwnd, retransmits, bytes each way, delivery "
                             "rate, last send/receive, congestion algorithm")
    detail.add_argument("-m", "--memory", action="store_true",
                        help="socket memory, as ss -m's skmem: receive/send queues in use and "
                             "their limits, reserved, queued, option memory, backlog, drops")
    detail.add_argument("--options", action="store_true",
                        help="socket options, knetstat-style (SO_REUSEADDR=1,SO_KEEPALIVE=0,"
                             "...): read with getsockopt on a borrowed fd (pidfd_getfd, "
                             "CAP_SYS_PTRACE; never changed)")
    socks.add_argument("--listening", "-l", action="store_true", help="listening sockets only")
    socks.add_argument("--state", type=_state, metavar="S",
                       help="only this state (LISTEN, ESTABLISHED, time-wait, ...)")
    socks.add_argument("--port", type=_port, metavar="N", help="local or remote port N")
    socks.add_argument("--pid", type=_positive, metavar="N", help="sockets held by pid N")
    socks.add_argument("--netns", metavar="NAME|INODE",
                       help="sockets of this namespace (its name as shown: host, pod:NS/NAME, "
                            "netns:PIN; or its inode)")


COMMANDS = ("summary", "by-namespace", "by-user", "deps", "graph", "by-pod", "serve", "watch",
            "sockets", "cluster")


def _epilog(columns: Sequence[str] = ()) -> str:
    from . import report
    from .palette import legend_lines

    parts = [report.VOCABULARY,
             "colours (on a terminal; NO_COLOR or --color never turn them off):",
             *legend_lines()]
    if columns:
        parts.append("columns for -o / --columns: " + ",".join(columns))
    return "\n".join(parts)


def _command_epilog(name: str) -> Callable[[], str]:
    def epilog() -> str:
        from .report import COLUMN_NAMES

        return _epilog(COLUMN_NAMES.get(name, ()))
    return epilog


def build_parser(env: Mapping[str, str] = os.environ,
                 only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with `only` (the command being run), that command alone:
    every parser costs argparse's gettext lookups and a formatter, and a command's start
    paid for all eleven."""
    common, reading = _common(env)
    parser = _Parser(prog="nsnet", description="Every network namespace on this machine, "
                     "its sockets, and the pids and users behind them. Without a command: "
                     "one line per namespace (nsnet summary).",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.epilog_of = _epilog
    parser.add_argument("--version", action="version", version=f"nsnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, help_text, reads_node, add_options in _commands(env):
        if only is not None and name != only:
            continue
        made: _Parser = sub.add_parser(
            name, parents=[common, reading] if reads_node else [common], help=help_text,
            formatter_class=argparse.RawDescriptionHelpFormatter)
        made.epilog_of = _command_epilog(name)
        add_options(made)
    return parser


def _no_options(p: argparse.ArgumentParser) -> None:
    pass


def _commands(env: Mapping[str, str]
              ) -> list[tuple[str, str, bool, Callable[[argparse.ArgumentParser], None]]]:
    """Each command: its name, its help line, whether it reads the node (the snapshot's
    options), and what adds its own options."""
    def by_namespace(p: argparse.ArgumentParser) -> None:
        p.add_argument("--netns", metavar="NAME|INODE",
                       help="only this namespace (its name as shown: host, pod:NS/NAME, "
                            "netns:PIN; or its inode)")

    def graph(p: argparse.ArgumentParser) -> None:
        p.add_argument("--format", choices=GRAPH_FORMATS, default="dot",
                       help="dot (default), mermaid, or svg/png drawn by Graphviz's dot "
                            "(when installed); --json prints the edge list")
        _history_options(p, env, "edges seen in the last AGE (30m, 24h, 7d); needs --db")

    def by_pod(p: argparse.ArgumentParser) -> None:
        p.add_argument("--pod", metavar="NS/NAME|UID", help="only this pod")

    return [
        ("summary", "the node at a glance: one line per namespace (the default)", True,
         _no_options),
        ("by-namespace", "every namespace: processes, listeners, connections", True,
         by_namespace),
        ("by-user", "the dependency view: who talks to whom", True,
         partial(_history_options, env=env,
                 since_help="from the agent's history (--db) instead of a live snapshot: "
                            "edges seen in the last AGE (30m, 24h, 7d)")),
        ("deps", "dependency edges: user/pod -> service, live or from history", True,
         partial(_history_options, env=env,
                 since_help="edges seen in the last AGE (30m, 24h, 7d); needs --db")),
        ("graph", "the dependency map: Graphviz dot, Mermaid, or an SVG/PNG", True, graph),
        ("by-pod", "Kubernetes pods: containers, owners, listeners, dependencies", True,
         by_pod),
        ("serve", "the node agent: sample periodically, serve JSON over HTTP", True,
         partial(_serve_options, env=env)),
        ("watch", "live: dependency edges, redrawn after every sample", True,
         partial(_sampling_options, defaults=WATCH_SAMPLING)),
        ("sockets", "one row per socket, like ss -tuanp for the node", True, _sockets_options),
        ("cluster", "the cluster-wide dependency map (workload -> workload), from the "
                    "Prometheus scraping the agents", False,
         partial(_cluster_options, env=env)),
    ]


def _cluster_options(p: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    p.add_argument("--prometheus", default=env.get("NSNET_PROMETHEUS") or None, metavar="URL",
                   help="the Prometheus that scrapes every node's agent (http:// or https://, "
                        "with its path prefix if any; default: $NSNET_PROMETHEUS)")
    p.add_argument("--since", default=CLUSTER.since, metavar="AGE",
                   help=f"edges seen in the last AGE, a Prometheus duration (30m, 1h, 7d; "
                        f"default {CLUSTER.since})")
    p.add_argument("--format", choices=CLUSTER_FORMATS, default=None,
                   help="table (default), json (as --json), dot or mermaid")
    p.add_argument("--bearer-token-file", type=_token_file, metavar="PATH",
                   help="send 'Authorization: Bearer TOKEN' (TOKEN: this file's content)")
    p.add_argument("--timeout", type=_seconds, default=CLUSTER.timeout, metavar="SECONDS",
                   help=f"per query (default {CLUSTER.timeout:g})")
    p.add_argument("--show-queries", action="store_true",
                   help="print the PromQL the map is made of (--since filled in) and exit "
                        "without asking Prometheus")


# --------------------------------------------------------------------- options objects

def snapshot_options(args: argparse.Namespace) -> SnapshotOptions:
    from .services import load_services

    return SnapshotOptions(proc=args.proc, source=args.source,
                           sandbox_commands=tuple(args.sandbox_command or SNAPSHOT.sandbox_commands),
                           enter_pinned=not args.no_enter, host_root=args.host_root,
                           services=load_services(args.services),
                           max_fds_per_user=args.max_fds_per_user,
                           deadline=args.deadline, details=_details(args),
                           translations=getattr(args, "translations", True))


def _details(args: argparse.Namespace) -> frozenset[str]:
    """-e: queues, timers, cookie; -i: TCP_INFO and the congestion algorithm; -m: socket
    memory; --options: socket options (sockets)."""
    return frozenset(name for name, asked in (("queues", getattr(args, "extended", False)),
                                              ("tcp_info", getattr(args, "info", False)),
                                              ("options", getattr(args, "options", False)),
                                              ("memory", getattr(args, "memory", False)))
                     if asked)


def _fields(args: argparse.Namespace) -> tuple[str, ...]:
    """The columns chosen with -o COL,COL or --columns, checked against the command's."""
    chosen = args.columns or (args.output if args.output not in (None, "wide", "json",
                                                                  "ndjson") else None)
    if chosen is None:
        return ()
    from .report import COLUMN_NAMES
    from .table import unknown_columns

    known = COLUMN_NAMES.get(args.command, [])
    if not known:
        raise UsageError(f"nsnet {args.command} draws no table: -o takes wide, json or ndjson "
                         "here")
    names = tuple(chosen.split(","))
    unknown = unknown_columns(names, known)
    if unknown:
        raise UsageError(f"unknown column {unknown[0]!r} for nsnet {args.command}; "
                         f"one of {','.join(known)}")
    return names


def output_options(args: argparse.Namespace, out: TextIO, env: Mapping[str, str]) -> OutputOptions:
    from .terminal import forced_columns, use_color

    # NO_COLOR beats even --color always here (the README's promise)
    color = use_color(out, args.color, no_color=env.get("NO_COLOR"), term=env.get("TERM")) \
        and not env.get("NO_COLOR")
    return OutputOptions(json=args.json or args.output == "json",
                         ndjson=getattr(args, "ndjson", False) or args.output == "ndjson",
                         color=color, resolve=args.resolve,
                         columns=forced_columns(env.get("COLUMNS")),
                         wide=args.output == "wide", fields=_fields(args), quiet=args.quiet,
                         verbose=args.verbose)


def renderer(output: OutputOptions, out: TextIO, doc: dict | None = None) -> report.Renderer:
    """How a table is drawn on ``out``: -o wide and pipes get every cell whole."""
    from . import report
    from .terminal import terminal_width

    width = None if output.wide else terminal_width(out, output.columns)
    return report.Renderer(width, output.color, output.resolve, columns=output.fields or None,
                           user_names=(doc or {}).get("user_names"))


def sampling_options(args: argparse.Namespace) -> SamplingOptions:
    return SamplingOptions(snapshot=snapshot_options(args), interval=args.interval,
                           max_cpu=args.max_cpu, events=args.events != "off",
                           traffic=args.traffic)


def traffic_options(args: argparse.Namespace) -> SamplingOptions:
    """A live `nsnet deps` / `graph`: one snapshot, with TCP_INFO unless --no-traffic."""
    return SamplingOptions(snapshot=snapshot_options(args), traffic=args.traffic)


def node_name(given: str | None, env: Mapping[str, str]) -> str:
    import socket

    return given or env.get("NODE_NAME") or socket.gethostname()


def agent_options(args: argparse.Namespace, env: Mapping[str, str]) -> AgentOptions:
    return AgentOptions(sampling=sampling_options(args), node=node_name(args.node_name, env),
                        listen=args.listen, expose_cmdlines=args.expose_cmdlines, db=args.db,
                        retention=args.retention, max_series=args.max_series,
                        auth_token_file=args.auth_token_file,
                        fork_samples=not args.in_process)


def cluster_options(args: argparse.Namespace, out: TextIO,
                    env: Mapping[str, str]) -> ClusterOptions:
    from .services import load_services

    if args.columns or args.output not in (None, "wide", "json", "ndjson"):
        raise UsageError("nsnet cluster has one table: -o takes wide, json or ndjson here")
    output = output_options(args, out, env)
    if (output.json or output.ndjson) and args.format not in (None, "json"):
        raise UsageError(f"{'-o ndjson' if output.ndjson else '--json'} and --format "
                         f"{args.format}: choose one")
    fmt = "json" if output.json else (args.format or "table")
    if not args.prometheus and not args.show_queries:
        raise UsageError("nsnet cluster needs --prometheus URL (or NSNET_PROMETHEUS)")
    return ClusterOptions(prometheus=args.prometheus, since=args.since, format=fmt,
                          services=load_services(args.services),
                          bearer_token_file=args.bearer_token_file, timeout=args.timeout,
                          show_queries=args.show_queries, output=output)


# ---------------------------------------------------------------------------- commands

def _emit_json(doc: dict, out: TextIO) -> None:
    # One line, no indent: only then does json use its C encoder (3x faster on a busy node;
    # pipe through `jq .` to read it). ASCII: no raw control bytes reach a terminal.
    # Written as it is encoded: a Stream's items (the sockets) are never all held at once.
    from .sanitize import json_chunks

    for chunk in json_chunks(doc):
        out.write(chunk)
    out.write("\n")


# one object per line for each list of a view, in this order; the rest of the document last
NDJSON_LISTS = (("namespaces", "namespace"), ("sockets", "socket"), ("users", "user"),
                ("pods", "pod"), ("edges", "edge"))


def _emit_ndjson(doc: dict, out: TextIO) -> None:
    from .sanitize import Stream, json_text

    schema = doc["schema"]
    for key, kind in NDJSON_LISTS:
        items = doc.get(key, ())
        listed = cast(Iterable[dict], items.items if isinstance(items, Stream) else items)
        for item in listed:
            out.write(json_text({"schema": schema, "type": kind, **item}) + "\n")
    # the last line: the stats (and whatever else the document holds), as ever
    rest = {k: list(v.items) if isinstance(v, Stream) else v for k, v in doc.items()
            if k not in dict(NDJSON_LISTS) and k != "schema"}
    out.write(json_text({"schema": schema, "type": "stats" if "stats" in rest else "document",
                         **rest}) + "\n")


def _only_uid(args: argparse.Namespace) -> int | None:
    from .ownership import resolve_user

    if getattr(args, "user", None) is None:
        return None
    try:
        return resolve_user(args.user)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _since(args: argparse.Namespace) -> float | None:
    if getattr(args, "since", None) is None:
        return None
    from .agent.store import parse_since

    try:
        since = parse_since(args.since)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not args.db:
        raise UsageError("--since reads the agent's history: give --db PATH (or set NSNET_DB)")
    return since


def run(args: argparse.Namespace, out: TextIO, err: TextIO,
        env: Mapping[str, str] = os.environ) -> int:
    if args.command == "cluster":
        return _cluster_command(cluster_options(args, out, env), out, err)
    only_uid = _only_uid(args)
    _fields(args)   # a bad -o COL: one error line before any work
    if args.command == "serve":
        from .agent.serve import serve
        return serve(agent_options(args, env), err)
    if args.command == "watch":
        from .agent.watch import watch
        return watch(WatchOptions(sampling_options(args), node_name(None, env),
                                  output_options(args, out, env)), out, err)
    since = _since(args)
    if args.command in ("deps", "graph") or (args.command == "by-user" and args.db
                                             and since is not None):
        return _edges_command(args, out, err, env, since, only_uid)
    return _snapshot_command(args, out, err, env, only_uid)


def _only_netns(text: str | None, snap: Snapshot) -> Namespace | None:
    from . import views

    if text is None:
        return None
    ns = views.resolve_netns(text, snap)
    if ns is None:
        raise UsageError(f"no network namespace {text!r} on this node (give a name as "
                         "'nsnet by-namespace' shows it, or an inode)")
    return ns


def _why_empty(ns: Namespace | None) -> list[str]:
    """A selected namespace whose tables could not be read shows nothing: say why."""
    if ns is None or ns.tables_read:
        return []
    return [f"{ns.name}: no sockets shown: its tables were not read ("
            + (ns.note or ns.error or "no task of it could be read") + ")"]


def _warn(err: TextIO, lines: list[str], output: OutputOptions | None = None) -> None:
    """One line each; on a terminal fitted to its width (the whole text is in --json's
    stats.privileges); nothing with -q."""
    from .terminal import terminal_width

    if output is not None and output.quiet:
        return
    width = terminal_width(err, output.columns if output else None)
    fit: Callable[[str], str]
    if width is None:       # not a terminal: the line whole, made printable
        from .sanitize import printable
        fit = printable
    else:
        from .table import fit_line
        fit = partial(fit_line, width=width)
    for line in lines:
        err.write(fit(f"nsnet: warning: {line}") + "\n")


def _say_reading(err: TextIO, snap: Snapshot, output: OutputOptions) -> None:
    if output.verbose:
        from .sanitize import printable

        err.write(f"nsnet: {printable(snap.stats.reading_line())}\n")


def _snapshot_command(args: argparse.Namespace, out: TextIO, err: TextIO,
                      env: Mapping[str, str], only_uid: int | None) -> int:
    from .snapshot import take_snapshot

    output = output_options(args, out, env)
    snap = take_snapshot(snapshot_options(args))
    _say_reading(err, snap, output)
    # a bad --netns/--pod: one error line, no more. JSON of sockets is streamed.
    doc = _snapshot_doc(args, snap, only_uid, stream=output.json or output.ndjson)
    _warn(err, snap.stats.warnings(), output)
    if getattr(args, "netns", None) is not None:
        _warn(err, _why_empty(_only_netns(args.netns, snap)), output)
    if output.ndjson:
        _emit_ndjson(doc, out)
    elif output.json:
        _emit_json(doc, out)
    else:
        from . import report

        render = {"sockets": report.render_sockets, "by-namespace": report.render_by_namespace,
                  "by-user": report.render_by_user, "by-pod": report.render_by_pod,
                  "summary": report.render_summary}[args.command]
        text = render(doc, renderer(output, out, doc))
        out.write(text + ("\n" if text else ""))
    return EXIT_OK if not snap.stats.namespaces_unread or snap.sockets else EXIT_ERROR


def _snapshot_doc(args: argparse.Namespace, snap: Snapshot, only_uid: int | None,
                  stream: bool = False) -> dict:
    from . import views

    if args.command == "sockets":
        protos = frozenset(p for p in KIND_HELP if getattr(args, p))
        if not protos and not args.all_kinds:
            protos = frozenset(KIND_HELP) - {"netlink"}
        only_ns = _only_netns(args.netns, snap)
        keep = views.SocketFilter(protos, args.listening, args.state, args.port, args.pid,
                                  only_ns.key if only_ns is not None else None)
        doc = (views.sockets_stream if stream else views.sockets_view)(snap, keep)
    elif args.command == "by-namespace":
        doc = views.by_namespace_view(snap, _only_netns(args.netns, snap))
    elif args.command == "summary":
        doc = views.summary_view(snap)
    elif args.command == "by-pod":
        only_pod = None
        if args.pod is not None:
            only_pod = views.resolve_pod(args.pod, snap)
            if only_pod is None:
                raise UsageError(f"no pod {args.pod!r} on this node (give NAMESPACE/NAME, the "
                                 "pod's uid or a prefix only it has; see 'nsnet by-pod')")
        doc = views.by_pod_view(snap, only_pod)
    else:
        doc = views.by_user_view(snap, only_uid)
    return doc


def _edges_command(args: argparse.Namespace, out: TextIO, err: TextIO, env: Mapping[str, str],
                   since: float | None, only_uid: int | None) -> int:
    from .services import load_services

    output = output_options(args, out, env)
    if args.db:
        doc = _history(args.db, since, only_uid, load_services(args.services), args.confirmed)
    else:
        doc = _live_edges(traffic_options(args), node_name(None, env), only_uid, err,
                          args.confirmed, output)
    return _print_edges(args, output, doc, out)


def _history(db: str, since: float | None, uid: int | None, services: ServiceMap,
             confirmed: bool) -> dict:
    from .agent.history import deps_view, rows_from_store
    from .agent.store import Store

    store = Store(db, readonly=True)
    try:
        rows = rows_from_store(store.edges(since=since, uid=uid))
    finally:
        store.close()
    return deps_view(rows, services, since, f"history {db}", live=False, confirmed=confirmed)


def _live_edges(sampling: SamplingOptions, node: str, uid: int | None, err: TextIO,
                confirmed: bool, output: OutputOptions) -> dict:
    import time

    from .agent.edges import merge, observe, servers, state_of, traffic
    from .agent.history import deps_view
    from .agent.sampler import snapshot_options as sample_options
    from .snapshot import take_snapshot

    snap = take_snapshot(sample_options(sampling))
    _say_reading(err, snap, output)
    _warn(err, snap.stats.warnings(), output)
    now = round(time.time(), 3)
    # the bytes and retransmits of the connections open now, over their lives
    observed = merge(observe(snap), traffic(snap))
    rows = [(node, key, state_of(seen, now))
            for key, seen in observed.items() if uid is None or key.uid == uid]
    return deps_view(rows, sampling.snapshot.services, None, "snapshot", confirmed=confirmed,
                     servers=servers(snap))


def _cluster_command(options: ClusterOptions, out: TextIO, err: TextIO) -> int:
    import time

    from . import cluster

    try:
        sent = cluster.queries(options.since)
    except ValueError as exc:
        raise UsageError(f"--since: {exc}") from None
    if options.show_queries:
        out.write("".join(f"# {name}\n{promql}\n" for name, promql in sent.items()))
        return EXIT_OK
    assert options.prometheus is not None      # cluster_options saw to it
    token = cluster.read_token(options.bearer_token_file) \
        if options.bearer_token_file else None
    prom = cluster.Prometheus(options.prometheus, options.timeout, token)
    doc = cluster.cluster_map(prom, options.since, round(time.time(), 3), options.services)
    _warn(err, doc["warnings"], options.output)
    output = options.output
    if output.ndjson:
        _emit_ndjson(doc, out)
    elif options.format == "json":
        _emit_json(doc, out)
    elif options.format == "dot":
        out.write(cluster.to_dot(doc))
    elif options.format == "mermaid":
        out.write(cluster.to_mermaid(doc))
    else:
        from .terminal import terminal_width

        width = None if output.wide else terminal_width(out, output.columns)
        out.write(cluster.render_table(doc, width, output.color) + "\n")
    return EXIT_OK


def _print_edges(args: argparse.Namespace, output: OutputOptions, doc: dict, out: TextIO) -> int:
    from . import report
    from .agent.history import by_user_history

    if args.command == "by-user":
        doc = by_user_history(doc)
    if output.ndjson:
        _emit_ndjson(doc, out)
    elif output.json:
        _emit_json(doc, out)
    elif args.command == "graph":
        _print_graph(doc["edges"], args.format, output, out)
    else:
        render = report.render_by_user_history if args.command == "by-user" \
            else report.render_deps
        text = render(doc, renderer(output, out, doc))
        out.write(text + ("\n" if text else ""))
    return EXIT_OK


def _print_graph(edges: list[dict], fmt: str, output: OutputOptions, out: TextIO) -> None:
    from .graph import draw, render

    if fmt not in ("svg", "png"):
        out.write(render(edges, fmt, output.resolve))
        return
    if fmt == "png" and _isatty(out):
        raise UsageError("a PNG is binary: redirect it to a file (nsnet graph --format png "
                         "> map.png)")
    picture = draw(edges, fmt, output.resolve)
    buffer = getattr(out, "buffer", None)
    if buffer is not None:
        out.flush()
        buffer.write(picture)
    elif fmt == "svg":      # a text stream without bytes underneath (embedded use)
        out.write(picture.decode("utf-8"))
    else:
        raise UsageError("a PNG is binary: this output takes only text")


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def main(argv: Sequence[str] | None = None) -> int:
    out, err = sys.stdout, sys.stderr
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv == ["--version"]:
        # what argparse would print, without building every command's help first
        out.write(f"nsnet {__version__}\n")
        return EXIT_OK
    if not any(a in COMMANDS for a in argv) and not {"-h", "--help", "--version"} & set(argv):
        argv = ["summary", *argv]   # `nsnet` alone: the node at a glance, not an error
    try:
        # the command comes first (or was put there): build only its options
        args = build_parser(only=argv[0] if argv and argv[0] in COMMANDS else None
                            ).parse_args(argv)
        return run(args, out, err)
    except NsnetError as exc:   # UsageError included: its exit_code is 2
        from .sanitize import printable

        err.write(f"nsnet: error: {printable(str(exc))}\n")
        return exc.exit_code
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
        from .sanitize import printable

        err.write(f"nsnet: internal error: {type(exc).__name__}: {printable(str(exc))} "
                  "(set NSNET_DEBUG=1 for a traceback)\n")
        return EXIT_INTERNAL
