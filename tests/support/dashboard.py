"""The queries of deploy/grafana/nsnet.json as Grafana sends them (every node chosen): the
unit tests check the dashboard's shape, the kernel tests run these on a real Prometheus."""
from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "nsnet.json"


def grafana_variables(expr: str, rate_interval: str = "1m", span: str = "5m") -> str:
    """A dashboard query with Grafana's variables filled in: every node, and the range and
    rate interval of a short look back."""
    return (expr.replace("$__rate_interval", rate_interval).replace("$__range", span)
            .replace('"$node"', '".*"'))


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(panel title, refId, query with the variables filled in) of every target."""
    doc = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["refId"], grafana_variables(t["expr"]))
            for p in doc["panels"] for t in p["targets"]]
