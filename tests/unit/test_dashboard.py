"""deploy/grafana/nsnet.json: what make_dashboard.py makes, and shaped as Grafana reads it.
Its queries run on a real Prometheus in tests/kernel/test_promql.py."""
from __future__ import annotations

import importlib.util
import json

from dashboard import DASHBOARD, dashboard_queries


def maker():
    spec = importlib.util.spec_from_file_location("make_dashboard",
                                                  DASHBOARD.parent / "make_dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_dashboard_file_is_what_the_script_makes():
    assert DASHBOARD.read_text() == maker().render(), (
        "deploy/grafana/nsnet.json is stale: run python3 deploy/grafana/make_dashboard.py")


def test_every_panel_queries_the_chosen_prometheus():
    doc = json.loads(DASHBOARD.read_text())
    names = {v["name"] for v in doc["templating"]["list"]}
    assert {"DS_PROMETHEUS", "node"} <= names
    assert len({p["id"] for p in doc["panels"]}) == len(doc["panels"])
    for panel in doc["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(set(refs)) == len(refs), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"] and target["expr"].strip()


def test_the_node_graph_has_a_nodes_and_an_edges_table():
    doc = json.loads(DASHBOARD.read_text())
    (graph,) = [p for p in doc["panels"] if p["type"] == "nodeGraph"]
    by_ref = {t["refId"]: t for t in graph["targets"]}
    assert set(by_ref) == {"nodes", "edges"}
    for target in by_ref.values():
        assert (target["format"], target["instant"]) == ("table", True)
    assert by_ref["nodes"]["expr"].startswith("sum by (id, title, subTitle)")
    assert by_ref["edges"]["expr"].startswith("sum by (id, source, target)")


def test_no_variable_is_left_unfilled():
    for title, ref, expr in dashboard_queries():
        assert "$node" not in expr and "$__" not in expr, (title, ref)
