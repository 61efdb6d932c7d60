"""The SQLite history: upserts, retention, bounds, kill -9 durability, unwritable paths."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from memnode import observed

from nsnet.agent.edges import EdgeKey
from nsnet.agent.store import SampleRecord, Store, StoreError, parse_since
from nsnet.errors import CorruptStore

REPO = Path(__file__).resolve().parents[2]
DB_EDGE = EdgeKey(10001, "pod:shop/cart", "outbound", "tcp", "10.0.0.5", 3306)
REDIS = EdgeKey(10001, "pod:shop/cart", "outbound", "tcp", "10.0.0.6", 6379)
INBOUND = EdgeKey(10002, "netns:4026532300", "inbound", "tcp", "10.88.0.1", 8080)


def sample(ts: float, **kw) -> SampleRecord:
    return SampleRecord(ts, kw.get("duration", 0.1), kw.get("cpu", 0.05), 3, 10,
                        kw.get("over_budget", False))


def test_edges_accumulate_across_samples(tmp_path):
    store = Store(str(tmp_path / "h.db"))
    store.record("node-a", observed({DB_EDGE: 3, INBOUND: 1}), sample(1000.0))
    store.record("node-a", observed({DB_EDGE: 1, REDIS: 2}), sample(1015.0))
    store.record("node-a", observed({DB_EDGE: 5}), sample(1030.0))
    rows = {(r.uid, r.where, r.peer_addr, r.port): r for r in store.edges()}
    db = rows[(10001, "pod:shop/cart", "10.0.0.5", 3306)]
    assert (db.first_seen, db.last_seen, db.samples, db.max_concurrent) == (1000.0, 1030.0, 3, 5)
    redis = rows[(10001, "pod:shop/cart", "10.0.0.6", 6379)]
    assert (redis.first_seen, redis.samples, redis.max_concurrent) == (1015.0, 1, 2)
    assert [r.uid for r in store.edges(uid=10002)] == [10002]
    assert {r.port for r in store.edges(since=1010.0)} == {3306, 6379}
    assert len(store.samples()) == 3
    store.close()


def test_retention_and_size_bound(tmp_path):
    store = Store(str(tmp_path / "h.db"), retention=100.0, max_edges=2)
    store.record("n", observed({INBOUND: 1}), sample(1000.0))
    store.record("n", observed({DB_EDGE: 1}), sample(1050.0))
    store.record("n", observed({REDIS: 1}), sample(1120.0))   # INBOUND is now 120 s old
    assert {r.port for r in store.edges()} == {3306, 6379}
    many = observed({EdgeKey(1, "host", "outbound", "tcp", f"10.1.0.{i}", 80): 1
                     for i in range(5)})
    store.record("n", many, sample(1130.0))
    assert len(store.edges()) == 2          # the bound keeps the freshest
    assert [s.ts for s in store.samples()] == [1050.0, 1120.0, 1130.0]


def test_reopen_and_readonly(tmp_path):
    path = str(tmp_path / "h.db")
    Store(path).record("n", observed({DB_EDGE: 1}), sample(5.0))
    ro = Store(path, readonly=True)
    assert [r.port for r in ro.edges()] == [3306]
    with pytest.raises(StoreError, match="no such file"):
        Store(str(tmp_path / "other.db"), readonly=True)


WRITER = textwrap.dedent("""
    import sys
    from nsnet.agent.edges import EdgeKey, Seen
    from nsnet.agent.store import SampleRecord, Store
    store = Store(sys.argv[1])
    i = 0
    while True:
        key = EdgeKey(i % 7, "host", "outbound", "tcp", f"10.2.{i // 250}.{i % 250}", 443)
        store.record("n", {key: Seen(open=1)}, SampleRecord(float(i), 0.1, 0.1, 1, 1, False))
        print(i, flush=True)      # committed: the parent may kill us any time after this
        i += 1
""")


def test_nothing_committed_is_lost_to_kill_9(tmp_path):
    path = str(tmp_path / "h.db")
    child = subprocess.Popen([sys.executable, "-c", WRITER, path], cwd=REPO,
                             stdout=subprocess.PIPE, text=True)
    committed = -1
    for line in child.stdout:
        committed = int(line)
        if committed >= 40:
            break
    child.send_signal(signal.SIGKILL)
    child.wait()
    rest = child.stdout.read().split()
    committed = int(rest[-1]) if rest else committed
    assert committed >= 40, "the writer never got going (it must commit 40 samples first)"
    store = Store(path)       # a restart: opens, recovers the WAL, goes on writing
    ts = [s.ts for s in store.samples()]
    assert len(ts) >= committed + 1 and ts[:committed + 1] == [float(i) for i in range(committed + 1)]
    assert len(store.edges()) == len(ts)
    store.record("n", observed({DB_EDGE: 1}), sample(10_000.0))
    assert store.samples()[-1].ts == 10_000.0


def test_unwritable_paths_are_clear_errors(tmp_path):
    with pytest.raises(StoreError) as err:
        Store(str(tmp_path / "no" / "such" / "dir" / "h.db"))
    assert "cannot open" in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "h.db").write_bytes(b"this is not a database, just some text " * 100)
    with pytest.raises(CorruptStore, match="cannot open"):
        Store(str(tmp_path / "h.db"))


def damaged(path: Path) -> bytes:
    """A real history with edges, then a page in its middle overwritten: a valid header, a
    damaged b-tree (what a torn write or a bad disk leaves)."""
    store = Store(str(path))
    for n in range(40):
        store.record("n1", observed({EdgeKey(10001 + u, "host", "outbound", "tcp",
                                             f"10.9.{n}.{u}", 443): 1 for u in range(50)}),
                     SampleRecord(float(n), 0.1, 0.05, 3, 10, False))
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 8 * page
    data[3 * page:5 * page] = b"\xa5" * (2 * page)
    path.write_bytes(bytes(data))
    return bytes(data)


@pytest.mark.parametrize("kind", ["not-a-database", "damaged-pages"])
def test_a_corrupt_history_is_moved_aside_and_a_fresh_one_started(tmp_path, kind):
    from nsnet.agent.serve import Agent, open_store
    from nsnet.options import AgentOptions, SamplingOptions
    from memnode import FixedScanner, MemNode

    db = tmp_path / "h.db"
    if kind == "not-a-database":
        db.write_bytes(b"garbage " * 2000)
        before = db.read_bytes()
    else:
        before = damaged(db)
    options = AgentOptions(sampling=SamplingOptions(events=False), node="n1", db=str(db))
    err = io.StringIO()
    store, history = open_store(options, err)
    assert store is not None and "moved aside to" in history
    [aside] = [f for f in tmp_path.glob("h.db.corrupt-*")
               if not f.name.endswith(("-wal", "-shm"))]
    assert aside.read_bytes() == before                       # kept for inspection, intact
    lines = err.getvalue().splitlines()
    assert len(lines) == 1 and "moved aside to" in lines[0] and "starting a fresh" in lines[0]
    node = MemNode()
    node.process(1, uid=0, cmdline=["/sbin/init"])
    agent = Agent(options, err, store=store, history=history,
                  scanner=FixedScanner([node.build()]))
    agent.step()                                               # the fresh one takes samples
    assert agent.status()["history_error"] is None
    agent.close()
    assert Store(str(db), readonly=True).samples() != []


def test_db_refuses_a_symlink_and_what_is_not_a_file(tmp_path):
    target = tmp_path / "elsewhere.db"
    link = tmp_path / "h.db"
    link.symlink_to(target)
    with pytest.raises(StoreError, match="is a symbolic link: refused"):
        Store(str(link))
    assert not target.exists()                                 # nothing created through it
    fifo = tmp_path / "fifo.db"
    os.mkfifo(fifo)
    with pytest.raises(StoreError, match="not a regular file: refused"):
        Store(str(fifo))


@pytest.mark.parametrize("text,back", [("30s", 30), ("90m", 5400), ("24h", 86400),
                                       ("7d", 7 * 86400), ("2w", 14 * 86400), ("45", 45)])
def test_parse_since(text, back):
    assert parse_since(text, now=1e6) == 1e6 - back


@pytest.mark.parametrize("text", ["", "d", "-3d", "soon", "nan", "3y", "1e400", "inf",
                                  "1e20d", "-inf"])
def test_parse_since_rejects(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_since(text, now=0)


def nsnet(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nsnet", *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_history_commands_read_the_store(tmp_path):
    import json
    import time

    path = str(tmp_path / "h.db")
    store = Store(path)
    now = time.time()
    store.record("node-a", observed({DB_EDGE: 2, INBOUND: 1}), sample(now - 3 * 86400))
    store.record("node-a", observed({REDIS: 1}), sample(now - 600))
    store.close()
    svc = tmp_path / "svc.toml"
    svc.write_text('[[service]]\nname = "shared-db"\nmatch = ["10.0.0.5:3306"]\n')

    week = json.loads(nsnet("by-user", "--since", "7d", "--db", path, "--json").stdout)
    assert week["view"] == "by-user" and week["source"] == f"history {path}"
    users = {u["uid"]: u for u in week["users"]}
    assert sorted(users) == [10001, 10002]
    assert {(e["peer_addr"], e["port"]) for e in users[10001]["connects_to"]} == {
        ("10.0.0.5", 3306), ("10.0.0.6", 6379)}
    assert [e["port"] for e in users[10002]["connected_from"]] == [8080]

    day = json.loads(nsnet("deps", "--since", "24h", "--db", path, "--json",
                           "--services", str(svc)).stdout)
    assert [(e["peer_addr"], e["pod_namespace"], e["pod"]) for e in day["edges"]] == [
        ("10.0.0.6", "shop", "cart")]
    week_db = json.loads(nsnet("deps", "--since", "7d", "--db", path, "--json", "--user",
                               "10001", "--services", str(svc)).stdout)
    assert {e["service"] for e in week_db["edges"]} == {"shared-db", None}

    graph = nsnet("graph", "--db", path, "--services", str(svc))
    assert graph.returncode == 0
    assert '"10001 @ shop/cart" -> "shared-db (10.0.0.5:3306)" [label="tcp x2"];' in graph.stdout
    table = nsnet("deps", "--db", path)
    assert table.returncode == 0 and "10.0.0.6:6379" in table.stdout


@pytest.mark.parametrize("argv,words", [
    (["deps", "--since", "24h"], ["--db"]),
    (["by-user", "--since", "soon", "--db", "x.db"], ["not a duration"]),
    (["deps", "--db", "/nonexistent/h.db"], ["no such file"]),
])
def test_history_command_errors_are_one_line(argv, words):
    run = nsnet(*argv)
    assert run.returncode in (1, 2) and "Traceback" not in run.stderr
    assert len(run.stderr.splitlines()) == 1 and run.stderr.startswith("nsnet: error: ")
    for word in words:
        assert word in run.stderr




def test_evidence_keeps_the_strongest_and_counters_add_up(tmp_path):
    store = Store(str(tmp_path / "h.db"))
    store.record("n", observed({DB_EDGE: 1}, evidence="namespace-owners", opened=1), sample(1.0))
    store.record("n", observed({DB_EDGE: 2}, evidence="holder", opened=1, ended=1), sample(2.0))
    store.record("n", observed({DB_EDGE: 0}, evidence="listener", ended=2), sample(3.0))
    store.record("n", observed({REDIS: 0}, evidence=None, closed=3), sample(4.0))
    rows = {r.port: r for r in store.edges()}
    db = rows[3306]
    assert (db.evidence, db.opened, db.closed, db.max_concurrent) == ("holder", 2, 3, 2)
    # seen only closed (three TIME_WAITs): one connection was open, none known to be now
    assert (rows[6379].evidence, rows[6379].max_concurrent) == (None, 1)


SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE edges (
    node TEXT NOT NULL, uid INTEGER NOT NULL, "where" TEXT NOT NULL,
    direction TEXT NOT NULL, proto TEXT NOT NULL, peer_addr TEXT NOT NULL, port INTEGER NOT NULL,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL,
    samples INTEGER NOT NULL, max_concurrent INTEGER NOT NULL,
    PRIMARY KEY (node, uid, "where", direction, proto, peer_addr, port)) WITHOUT ROWID;
CREATE TABLE samples (
    ts REAL NOT NULL, node TEXT NOT NULL, duration REAL NOT NULL, cpu REAL NOT NULL,
    namespaces INTEGER NOT NULL, sockets INTEGER NOT NULL, edges INTEGER NOT NULL,
    over_budget INTEGER NOT NULL);
INSERT INTO meta VALUES ('schema', '1');
INSERT INTO edges VALUES ('n', 10001, 'pod:shop/cart', 'outbound', 'tcp', '10.0.0.5', 3306,
                          10.0, 20.0, 3, 4);
"""


def test_a_schema_1_history_is_read_as_it_is_and_upgraded_by_the_agent(tmp_path):
    import sqlite3

    path = str(tmp_path / "old.db")
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA_1)
    (old,) = Store(path, readonly=True).edges()     # nsnet deps --db on an older agent's file
    assert (old.max_concurrent, old.evidence, old.opened, old.closed) == (4, None, 0, 0)
    store = Store(path)                             # the agent: upgraded in place
    assert store.schema == "5"
    store.record("n", observed({DB_EDGE: 1}, evidence="holder", opened=1), sample(30.0))
    (row,) = store.edges()
    assert (row.samples, row.max_concurrent, row.evidence, row.opened) == (4, 4, "holder", 1)
    assert row.direction_inferred == 0
    store.close()
    assert Store(path, readonly=True).schema == "5"


def test_a_direction_inferred_is_kept_until_an_exact_sample(tmp_path):
    from nsnet.agent.edges import Seen

    store = Store(str(tmp_path / "h.db"))
    guessed = Seen(open=1, inferred=1)
    store.record("n", {DB_EDGE: guessed}, sample(10.0))
    assert store.edges()[0].direction_inferred == 1
    store.record("n", {DB_EDGE: Seen(open=1, exact=1)}, sample(20.0))
    store.record("n", {DB_EDGE: guessed}, sample(30.0))
    assert store.edges()[0].direction_inferred == 0
    store.close()


def test_a_schema_2_history_is_upgraded_and_read_as_it_is(tmp_path):
    import sqlite3

    path = str(tmp_path / "v2.db")
    with sqlite3.connect(path) as db:       # what a schema-2 agent wrote
        db.executescript(SCHEMA_4 + DROP_TRAFFIC + "ALTER TABLE edges DROP COLUMN direction_inferred; "
                         "UPDATE meta SET value = '2' WHERE key = 'schema'; "
                         "INSERT INTO edges VALUES ('n', 10001, 'pod:shop/cart', 'outbound', "
                         "'tcp', '10.0.0.5', 3306, 10.0, 20.0, 3, 4, 'holder', 2, 1);")
    (old,) = Store(path, readonly=True).edges()
    assert (old.evidence, old.opened, old.closed, old.direction_inferred) == ("holder", 2, 1, 0)
    store = Store(path)
    assert store.schema == "5" and store.edges() == [old]
    store.close()


# what a schema-4 agent made (before `via` joined the edges' key)
SCHEMA_4 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE edges (
    node TEXT NOT NULL, uid INTEGER NOT NULL, "where" TEXT NOT NULL,
    direction TEXT NOT NULL, proto TEXT NOT NULL, peer_addr TEXT NOT NULL, port INTEGER NOT NULL,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL,
    samples INTEGER NOT NULL, max_concurrent INTEGER NOT NULL,
    evidence TEXT, opened INTEGER NOT NULL DEFAULT 0, closed INTEGER NOT NULL DEFAULT 0,
    direction_inferred INTEGER NOT NULL DEFAULT 0,
    bytes_sent INTEGER, bytes_received INTEGER, retransmits INTEGER, rtt_us REAL,
    PRIMARY KEY (node, uid, "where", direction, proto, peer_addr, port)) WITHOUT ROWID;
CREATE INDEX edges_by_last_seen ON edges (last_seen);
CREATE TABLE samples (
    ts REAL NOT NULL, node TEXT NOT NULL, duration REAL NOT NULL, cpu REAL NOT NULL,
    namespaces INTEGER NOT NULL, sockets INTEGER NOT NULL, edges INTEGER NOT NULL,
    over_budget INTEGER NOT NULL);
INSERT INTO meta VALUES ('schema', '4');
"""


def test_a_schema_4_history_gets_via_in_the_key_and_keeps_its_rows(tmp_path):
    import sqlite3

    from nsnet.agent.edges import EdgeKey

    path = str(tmp_path / "v4.db")
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA_4 + "INSERT INTO edges VALUES ('n', 10001, 'pod:shop/cart', "
                         "'outbound', 'tcp', '10.0.0.5', 3306, 10.0, 20.0, 3, 4, 'holder', 2, "
                         "1, 0, 100, 7, 1, 250.0);")
    (old,) = Store(path, readonly=True).edges()
    assert (old.bytes_sent, old.via) == (100, "")
    store = Store(path)
    assert store.schema == "5" and store.edges() == [old]
    # the same backend reached directly and through a VIP: two edges
    via = EdgeKey(DB_EDGE.uid, DB_EDGE.where, "outbound", "tcp", DB_EDGE.peer_addr,
                  DB_EDGE.port, "10.96.0.10:3306")
    store.record("n", {DB_EDGE: traffic_seen(5, 5, 0), via: traffic_seen(9, 9, 0)}, sample(30.0))
    rows = {r.via: r for r in store.edges()}
    assert set(rows) == {"", "10.96.0.10:3306"}
    assert (rows[""].bytes_sent, rows[""].samples, rows["10.96.0.10:3306"].bytes_sent) == \
        (105, 4, 9)
    indexes = {r[0] for r in store.db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'edges'")}
    assert "edges_by_last_seen" in indexes
    store.close()


DROP_TRAFFIC = "".join(f"ALTER TABLE edges DROP COLUMN {c}; "
                       for c in ("bytes_sent", "bytes_received", "retransmits", "rtt_us"))


def test_a_schema_3_history_is_upgraded_and_its_traffic_is_unknown(tmp_path):
    import sqlite3

    path = str(tmp_path / "v3.db")
    with sqlite3.connect(path) as db:       # what a schema-3 agent wrote
        db.executescript(SCHEMA_4 + DROP_TRAFFIC + "UPDATE meta SET value = '3' WHERE key = 'schema'; "
                         "INSERT INTO edges VALUES ('n', 10001, 'pod:shop/cart', 'outbound', "
                         "'tcp', '10.0.0.5', 3306, 10.0, 20.0, 3, 4, 'holder', 2, 1, 0);")
    (old,) = Store(path, readonly=True).edges()
    assert (old.opened, old.bytes_sent, old.bytes_received, old.retransmits, old.rtt_us) == \
        (2, None, None, None, None)
    store = Store(path)
    assert store.schema == "5" and store.edges() == [old]
    store.record("n", {DB_EDGE: traffic_seen(100, 7, 1, rtt_us=250)}, sample(30.0))
    (row,) = store.edges()
    assert (row.bytes_sent, row.bytes_received, row.retransmits, row.rtt_us) == (100, 7, 1, 250.0)
    store.close()


def traffic_seen(sent, received, retransmits, rtt_us=None):
    from nsnet.agent.edges import Seen

    seen = Seen(open=1, evidence="holder", sent=sent, received=received,
                retransmits=retransmits, measured=True)
    if rtt_us is not None:
        seen.rtt_sum_us, seen.rtt_count = rtt_us, 1
    return seen


def test_traffic_adds_up_over_samples_and_unmeasured_samples_leave_it_alone(tmp_path):
    from nsnet.agent.edges import Seen

    store = Store(str(tmp_path / "h.db"))
    store.record("n", {REDIS: Seen(open=1)}, sample(1.0))        # the proc source: no TCP_INFO
    store.record("n", {DB_EDGE: Seen(open=1)}, sample(1.0))
    assert [(r.bytes_sent, r.rtt_us) for r in store.edges()] == [(None, None), (None, None)]
    store.record("n", {DB_EDGE: traffic_seen(1000, 20, 0, rtt_us=300)}, sample(2.0))
    store.record("n", {DB_EDGE: traffic_seen(500, 30, 2)}, sample(3.0))    # closed: no rtt
    store.record("n", {DB_EDGE: Seen(open=1)}, sample(4.0))                  # unmeasured
    rows = {r.port: r for r in store.edges()}
    assert (rows[3306].bytes_sent, rows[3306].bytes_received, rows[3306].retransmits,
            rows[3306].rtt_us) == (1500, 50, 2, 300.0)
    assert rows[6379].bytes_sent is None
    store.close()


def test_an_unknown_schema_is_refused(tmp_path):
    import sqlite3

    path = str(tmp_path / "future.db")
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA_1.replace("'schema', '1'", "'schema', '9'"))
    for readonly in (False, True):
        with pytest.raises(StoreError, match="schema '9', this nsnet writes '5'"):
            Store(path, readonly=readonly)
