"""Durable history of dependency edges, in SQLite (the standard library's sqlite3).

WAL journal with synchronous=FULL and one transaction per sample: a `kill -9` (or a power cut)
loses at most the sample being written, never one that was committed. Bounded: edges not seen
for `retention` seconds are deleted, and at most `max_edges` are kept (the stalest go first).

Schema 2 adds to each edge the strongest evidence seen for its user (model.EVIDENCE) and the
connections seen opening and closing; schema 3 whether its direction was only ever inferred
from the ports (edges.Seen.direction_inferred); schema 4 its traffic (bytes each way and
segments retransmitted, summed over the samples; NULL: never measured -- no TCP_INFO) and
the latest RTT measured; schema 5 the Service VIP an outbound edge went through (`via`,
part of the edge's key: its peer is then the backend reached; '' for none). An older history
is upgraded in place when the agent opens it (what it lacks stays unknown: NULL evidence,
0 counts, a direction taken as known, no via), and read as it is by the read-only commands.
"""
from __future__ import annotations

import os
import sqlite3
import stat
import time

from ..errors import CorruptStore, StoreError
from ..model import EVIDENCE
from ..options import AgentOptions
from ..records import record
from .edges import Observed

SCHEMA_VERSION = "5"
_UPGRADABLE = {"1", "2", "3", "4"}
DEFAULT_RETENTION = AgentOptions().retention
DEFAULT_MAX_EDGES = 200_000

# The edges' table (schema 5). The key's columns come first: SQLite 3.40's integrity check
# (Debian 12's) misreads a WITHOUT ROWID table whose key columns are declared after others,
# and open() runs that check.
_EDGES = """(
    node TEXT NOT NULL, uid INTEGER NOT NULL, "where" TEXT NOT NULL,
    direction TEXT NOT NULL, proto TEXT NOT NULL, peer_addr TEXT NOT NULL, port INTEGER NOT NULL,
    via TEXT NOT NULL DEFAULT '',
    first_seen REAL NOT NULL, last_seen REAL NOT NULL,
    samples INTEGER NOT NULL, max_concurrent INTEGER NOT NULL,
    evidence TEXT, opened INTEGER NOT NULL DEFAULT 0, closed INTEGER NOT NULL DEFAULT 0,
    direction_inferred INTEGER NOT NULL DEFAULT 0,
    bytes_sent INTEGER, bytes_received INTEGER, retransmits INTEGER, rtt_us REAL,
    PRIMARY KEY (node, uid, "where", direction, proto, peer_addr, port, via)) WITHOUT ROWID;"""

_DDL = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS edges {_EDGES}
CREATE INDEX IF NOT EXISTS edges_by_last_seen ON edges (last_seen);
CREATE TABLE IF NOT EXISTS samples (
    ts REAL NOT NULL, node TEXT NOT NULL, duration REAL NOT NULL, cpu REAL NOT NULL,
    namespaces INTEGER NOT NULL, sockets INTEGER NOT NULL, edges INTEGER NOT NULL,
    over_budget INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS samples_by_ts ON samples (ts);
"""

_UPGRADE_1 = """
ALTER TABLE edges ADD COLUMN evidence TEXT;
ALTER TABLE edges ADD COLUMN opened INTEGER NOT NULL DEFAULT 0;
ALTER TABLE edges ADD COLUMN closed INTEGER NOT NULL DEFAULT 0;
"""
_UPGRADE_2 = """
ALTER TABLE edges ADD COLUMN direction_inferred INTEGER NOT NULL DEFAULT 0;
"""
_UPGRADE_3 = """
ALTER TABLE edges ADD COLUMN bytes_sent INTEGER;
ALTER TABLE edges ADD COLUMN bytes_received INTEGER;
ALTER TABLE edges ADD COLUMN retransmits INTEGER;
ALTER TABLE edges ADD COLUMN rtt_us REAL;
"""
# `via` joins the primary key: SQLite cannot change a table's key in place, so the table
# is made anew and the rows copied (each with via '': none was known).
_EDGE_COLUMNS = ('node, uid, "where", direction, proto, peer_addr, port, first_seen, '
                 'last_seen, samples, max_concurrent, evidence, opened, closed, '
                 'direction_inferred, bytes_sent, bytes_received, retransmits, rtt_us')
_UPGRADE_4 = f"""
CREATE TABLE edges_5 {_EDGES}
INSERT INTO edges_5 ({_EDGE_COLUMNS}, via) SELECT {_EDGE_COLUMNS}, '' FROM edges;
DROP TABLE edges;
ALTER TABLE edges_5 RENAME TO edges;
CREATE INDEX IF NOT EXISTS edges_by_last_seen ON edges (last_seen);
"""
_UPGRADES = {"1": _UPGRADE_1 + _UPGRADE_2 + _UPGRADE_3 + _UPGRADE_4,
             "2": _UPGRADE_2 + _UPGRADE_3 + _UPGRADE_4, "3": _UPGRADE_3 + _UPGRADE_4,
             "4": _UPGRADE_4}
# what the read-only commands select for the columns a history of each schema lacks
_TRAFFIC = "bytes_sent, bytes_received, retransmits, rtt_us"
_ADDED = {"5": f"evidence, opened, closed, direction_inferred, {_TRAFFIC}, via",
          "4": f"evidence, opened, closed, direction_inferred, {_TRAFFIC}, ''",
          "3": "evidence, opened, closed, direction_inferred, NULL, NULL, NULL, NULL, ''",
          "2": "evidence, opened, closed, 0, NULL, NULL, NULL, NULL, ''",
          "1": "NULL, 0, 0, 0, NULL, NULL, NULL, NULL, ''"}


def _sum(column: str) -> str:
    """SQL: a traffic counter plus the sample's (NULL, not measured, leaves it as it was)."""
    return (f"{column} = CASE WHEN excluded.{column} IS NULL THEN {column} "
            f"ELSE coalesce({column}, 0) + excluded.{column} END")


def _rank(column: str) -> str:
    """SQL: the strength of an evidence column (lower: stronger; NULL: weakest)."""
    cases = " ".join(f"WHEN '{kind}' THEN {n}" for n, kind in enumerate(EVIDENCE))
    return f"(CASE {column} {cases} ELSE {len(EVIDENCE)} END)"


_UPSERT = f"""
INSERT INTO edges (node, uid, "where", direction, proto, peer_addr, port,
                   first_seen, last_seen, samples, max_concurrent, evidence, opened, closed,
                   direction_inferred, {_TRAFFIC}, via)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (node, uid, "where", direction, proto, peer_addr, port, via) DO UPDATE SET
    first_seen = min(first_seen, excluded.first_seen),
    last_seen = max(last_seen, excluded.last_seen),
    samples = samples + 1,
    max_concurrent = max(max_concurrent, excluded.max_concurrent),
    evidence = CASE WHEN {_rank("excluded.evidence")} < {_rank("edges.evidence")}
                    THEN excluded.evidence ELSE edges.evidence END,
    opened = opened + excluded.opened,
    closed = closed + excluded.closed,
    direction_inferred = min(direction_inferred, excluded.direction_inferred),
    {_sum("bytes_sent")}, {_sum("bytes_received")}, {_sum("retransmits")},
    rtt_us = coalesce(excluded.rtt_us, rtt_us)
"""


def _error(path: str, what: str, exc: BaseException) -> StoreError:
    # DatabaseError proper (not its Operational/Integrity/... subclasses) is SQLite saying the
    # file is damaged or not a database: SQLITE_CORRUPT, SQLITE_NOTADB
    kind = CorruptStore if type(exc) is sqlite3.DatabaseError else StoreError
    return kind(f"history database {path}: cannot {what}: {exc}")


def check_path(path: str) -> None:
    """Refuse a --db that is a symbolic link, not a regular file, or another user's file:
    root must not create or rewrite a database wherever a tenant-writable directory points."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return          # created by us, below
    except OSError as exc:
        raise StoreError(f"history database {path}: {exc.strerror}") from exc
    if stat.S_ISLNK(st.st_mode):
        raise StoreError(f"history database {path}: is a symbolic link: refused (give the "
                         "real path)")
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"history database {path}: not a regular file: refused")
    if st.st_uid != os.geteuid():
        raise StoreError(f"history database {path}: owned by uid {st.st_uid}, not by us "
                         f"(uid {os.geteuid()}): refused")


def move_aside(path: str, now: float | None = None) -> str:
    """Keep a damaged history for inspection: rename it (and its WAL and shared-memory files)
    to PATH.corrupt-<time>; returns the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    aside = f"{path}.corrupt-{stamp}"
    try:
        for suffix in ("", "-wal", "-shm"):
            if os.path.lexists(path + suffix):
                os.rename(path + suffix, aside + suffix)
    except OSError as exc:
        raise StoreError(f"history database {path}: damaged, and cannot be moved aside: "
                         f"{exc.strerror}") from exc
    return aside


@record(frozen=True, slots=True)
class SampleRecord:
    ts: float
    duration: float
    cpu: float
    namespaces: int
    sockets: int
    over_budget: bool


@record(frozen=True, slots=True)
class EdgeRow:
    node: str
    uid: int
    where: str
    direction: str
    proto: str
    peer_addr: str
    port: int
    first_seen: float
    last_seen: float
    samples: int
    max_concurrent: int
    evidence: str | None = None     # the strongest seen (None: unknown, or a schema-1 row)
    opened: int = 0                 # connections seen opening
    closed: int = 0                 # connections seen ending
    direction_inferred: int = 0     # 1: which end served was only inferred from the ports
    bytes_sent: int | None = None   # traffic summed over the samples (None: never measured)
    bytes_received: int | None = None
    retransmits: int | None = None
    rtt_us: float | None = None     # the latest measured
    via: str = ""                   # EdgeKey.via: the Service VIP it went through


def _open_readonly(path: str) -> sqlite3.Connection:
    """A read-only connection; on a read-only mount SQLite cannot create the WAL's
    shared-memory file: the file is then read as immutable (nobody can be writing it there)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        return db
    except sqlite3.OperationalError:
        db.close()
        if not _on_readonly_mount(path):
            raise
    return sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, timeout=10)


def _on_readonly_mount(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _same_file(path: str, inode: int | None) -> None:
    """The file SQLite opened is still the one checked (nobody swapped in a link meanwhile)."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or (inode is not None and st.st_ino != inode):
        raise StoreError(f"history database {path}: replaced while being opened: refused")


class Store:
    def __init__(self, path: str, *, retention: float = DEFAULT_RETENTION,
                 max_edges: int = DEFAULT_MAX_EDGES, readonly: bool = False):
        self.path = path
        self.retention = retention
        self.max_edges = max_edges
        try:
            if readonly:
                if not os.path.exists(path):
                    raise StoreError(f"history database {path}: no such file "
                                     "(is this the --db that 'nsnet serve' writes?)")
                self.db = _open_readonly(path)
            else:
                check_path(path)
                before = os.lstat(path).st_ino if os.path.lexists(path) else None
                self.db = sqlite3.connect(path, timeout=10)
                self.db.execute("PRAGMA journal_mode=WAL")
                _same_file(path, before)
                if self.db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                    raise sqlite3.DatabaseError("database disk image is malformed")
                self.db.execute("PRAGMA synchronous=FULL")
                self.db.executescript(_DDL)
                self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)",
                                (SCHEMA_VERSION,))
                self.db.commit()
            found = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            self.schema = found[0] if found is not None else None
            if not readonly and self.schema in _UPGRADABLE:
                with self.db:
                    self.db.executescript("BEGIN;" + _UPGRADES[self.schema]
                                          + f"UPDATE meta SET value = '{SCHEMA_VERSION}' "
                                            "WHERE key = 'schema'; COMMIT;")
                self.schema = SCHEMA_VERSION
        except sqlite3.Error as exc:
            raise _error(path, "open", exc) from exc
        if self.schema != SCHEMA_VERSION and not (readonly and self.schema in _UPGRADABLE):
            raise StoreError(f"history database {path}: schema {self.schema!r}, "
                             f"this nsnet writes {SCHEMA_VERSION!r}")

    def close(self) -> None:
        self.db.close()


    def record(self, node: str, observed: Observed, sample: SampleRecord) -> None:
        """One sample, one transaction."""
        ts = sample.ts
        rows = [(node, k.uid, k.where, k.direction, k.proto, k.peer_addr, k.port, ts, ts,
                 max(seen.open, int(bool(seen.closed or seen.ended))), seen.evidence,
                 seen.opened, seen.ended, int(seen.direction_inferred),
                 *((seen.sent, seen.received, seen.retransmits) if seen.measured
                   else (None, None, None)), seen.rtt_us, k.via)
                for k, seen in observed.items()]
        try:
            with self.db:
                self.db.executemany(_UPSERT, rows)
                self.db.execute("INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                (ts, node, sample.duration, sample.cpu, sample.namespaces,
                                 sample.sockets, len(rows), int(sample.over_budget)))
                self._expire(ts)
        except sqlite3.Error as exc:
            raise _error(self.path, "write", exc) from exc

    def _expire(self, now: float) -> None:
        horizon = now - self.retention
        self.db.execute("DELETE FROM edges WHERE last_seen < ?", (horizon,))
        self.db.execute("DELETE FROM samples WHERE ts < ?", (horizon,))
        excess = self.db.execute("SELECT count(*) FROM edges").fetchone()[0] - self.max_edges
        if excess > 0:
            self.db.execute("""DELETE FROM edges WHERE
                (node, uid, "where", direction, proto, peer_addr, port, via) IN (
                 SELECT node, uid, "where", direction, proto, peer_addr, port, via FROM edges
                 ORDER BY last_seen LIMIT ?)""", (excess,))

    def edges(self, since: float | None = None, uid: int | None = None,
              node: str | None = None) -> list[EdgeRow]:
        where: list[str] = ["1"]
        args: list[object] = []
        if since is not None:
            where.append("last_seen >= ?")
            args.append(since)
        if uid is not None:
            where.append("uid = ?")
            args.append(uid)
        if node is not None:
            where.append("node = ?")
            args.append(node)
        added = _ADDED.get(self.schema or "", _ADDED["1"])
        sql = (f'SELECT node, uid, "where", direction, proto, peer_addr, port, first_seen, '
               f'last_seen, samples, max_concurrent, {added} FROM edges '
               f'WHERE {" AND ".join(where)} ORDER BY uid, "where", direction, peer_addr, port')
        try:
            return [EdgeRow(*row) for row in self.db.execute(sql, args)]
        except sqlite3.Error as exc:
            raise _error(self.path, "read", exc) from exc

    def samples(self, since: float | None = None) -> list[SampleRecord]:
        try:
            rows = self.db.execute(
                "SELECT ts, duration, cpu, namespaces, sockets, over_budget FROM samples "
                "WHERE ts >= ? ORDER BY ts", (since or 0.0,)).fetchall()
        except sqlite3.Error as exc:
            raise _error(self.path, "read", exc) from exc
        return [SampleRecord(ts, d, c, n, s, bool(o)) for ts, d, c, n, s, o in rows]


def parse_since(text: str, now: float | None = None) -> float:
    """'7d', '24h', '90m', '30s' (or a bare number of seconds) back from now."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    text = text.strip().lower()
    scale = units.get(text[-1:])
    number = text[:-1] if scale else text
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    # finite and at most a century: JSON has no infinity, and no history is older
    if not 0 <= value * (scale or 1) <= 100 * 365 * 86400:
        raise ValueError(f"not a duration: {text!r} (e.g. 30m, 24h, 7d)")
    return (time.time() if now is None else now) - value * (scale or 1)

