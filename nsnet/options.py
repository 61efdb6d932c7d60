"""Every setting, as frozen dataclasses: what the CLI hands to the pipeline below it.

Only nsnet/cli.py reads the command line and the option environment variables
(NSNET_PROC, NSNET_HOST_ROOT, NSNET_SERVICES, NSNET_DB, NODE_NAME, NO_COLOR, COLUMNS ...);
it builds these objects, and nothing below it sees argparse. The defaults live here, once:
the CLI's own defaults are read from these classes.
"""
from __future__ import annotations

from dataclasses import field

from .model import NO_SERVICES, ServiceMap
from .records import record

SOURCES = ("proc", "netlink", "pidfd", "auto")
GRAPH_FORMATS = ("dot", "mermaid", "svg", "png")   # nsnet graph --format
DAY = 86400.0


@record(frozen=True)
class SnapshotOptions:
    """How one snapshot of the node is taken."""
    proc: str = "/proc"                         # the procfs to read (/host/proc in a container)
    source: str = "auto"                        # proc | netlink | pidfd | auto (nsnet.sources)
    sandbox_commands: tuple[str, ...] = ("pause",)   # namespace holders, never owners
    enter_pinned: bool = True                   # setns into namespaces only a bind mount keeps
    host_root: str | None = "/"              # where /var/log/pods is; None: do not look
    threads: int | None = None               # reader threads; None: one per CPU, at most 8
    services: ServiceMap = NO_SERVICES          # the operator's names for endpoints
    # fd links read per uid in one snapshot at most (walk.py); None: every fd
    max_fds_per_user: int | None = 1 << 18
    # seconds the process walk may take (the agent's paced sleeps not counted); the
    # processes left are counted, not walked. None: no deadline
    deadline: float | None = None
    # model.DETAILS to read besides the sockets (queues and timers, TCP_INFO): off by default
    details: frozenset[str] = frozenset()
    # connections to a Service VIP resolved to the backend they reach, from the host
    # namespace's connection-tracking table (conntrack.py)
    translations: bool = True


@record(frozen=True)
class OutputOptions:
    """How a result is printed."""
    json: bool = False
    ndjson: bool = False
    color: bool = False                         # resolved: --color, NO_COLOR, TERM, a tty
    resolve: bool = False                       # service names for port numbers
    columns: int | None = None               # COLUMNS: a width forced by the user
    wide: bool = False                          # -o wide: nothing cut, nothing hidden
    fields: tuple[str, ...] = ()                # -o COL,COL / --columns: the columns chosen
    quiet: bool = False                         # -q: no warnings
    verbose: bool = False                       # -v: one line on stderr, what read the snapshot


@record(frozen=True)
class SamplingOptions:
    """How the agent and the live view sample the node."""
    snapshot: SnapshotOptions = field(default_factory=SnapshotOptions)
    interval: float = 15.0                      # seconds between samples
    max_cpu: float = 0.05                       # CPU budget, a fraction of one core
    events: bool = True                         # TCP destroy events, when privileges allow
    # each edge's bytes, retransmits and rtt (TCP_INFO: netlink, pidfd and auto read it;
    # proc cannot), at the cost of reading TCP_INFO with every sample
    traffic: bool = True


@record(frozen=True)
class AgentOptions:
    """nsnet serve."""
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    node: str = "localhost"                     # this node's name in edges and metrics
    listen: tuple[str, int] = ("0.0.0.0", 9810)
    expose_cmdlines: bool = False
    db: str | None = None                    # the SQLite history; None: memory only
    retention: float = 30 * DAY
    max_series: int = 5000                      # edge series in /metrics before folding
    # seconds a client may stay silent: send no byte of its request, or take no byte of its
    # answer
    http_timeout: float = 10.0
    # seconds a connection may take to send its request line and headers in all (a client
    # sending a byte every few seconds never trips http_timeout)
    http_header_deadline: float = 30.0
    max_connections: int = 256                  # HTTP connections served at once...
    max_per_client: int = 16                    # ...and from one client address
    auth_token_file: str | None = None       # bearer token asked on all but the probes
    # each sample (and each answer built from a snapshot) in a child process that exits:
    # the agent then holds only the edges and the packed snapshot between samples
    fork_samples: bool = True


WATCH_SAMPLING = SamplingOptions(interval=2.0, max_cpu=0.5)


@record(frozen=True)
class WatchOptions:
    """nsnet watch."""
    sampling: SamplingOptions = WATCH_SAMPLING
    node: str = "localhost"
    output: OutputOptions = field(default_factory=OutputOptions)


CLUSTER_FORMATS = ("table", "json", "dot", "mermaid")   # nsnet cluster --format


@record(frozen=True)
class ClusterOptions:
    """nsnet cluster: the cluster-wide map, from the Prometheus that scrapes every agent."""
    prometheus: str | None = None            # its base URL (http or https)
    since: str = "1h"                           # the window, a Prometheus duration
    format: str = "table"                       # CLUSTER_FORMATS; ndjson through output
    services: ServiceMap = NO_SERVICES          # the operator's names for endpoints
    bearer_token_file: str | None = None     # sent as 'Authorization: Bearer ...'
    timeout: float = 30.0                       # seconds per query (and Prometheus' own)
    show_queries: bool = False                  # print the PromQL, ask nothing
    output: OutputOptions = field(default_factory=OutputOptions)
