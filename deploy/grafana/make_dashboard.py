"""The Grafana dashboard of deploy/grafana/nsnet.json, written by this script
(`python3 deploy/grafana/make_dashboard.py`; the tests check the file is what it makes, and
run every query of it on a real Prometheus: tests/kernel/test_promql.py).

A node graph of who connects to what (Grafana's node graph takes a `nodes` frame with `id`,
`title`, `subTitle` and an `edges` frame with `id`, `source`, `target`: instant table queries
whose labels are those fields), the edges by user, bytes and rtt from the edges' traffic,
and the agents' health."""
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
OUT = 'nsnet_edge_connections{direction="outbound", node=~"$node"}'
# a client place: the pod (namespace/name), else the namespace's name (host, netns:...)
CLIENT = (f'label_replace(label_join(label_replace({OUT}, "client", "$1", "netns", "(.+)"), '
          '"namespace_pod", "/", "namespace", "pod"), "client", "$1", "namespace_pod", "/?([^/].*)")')
# a service: its name where the agent has one, else peer:port
SERVICE = ('label_replace(label_join({x}, "service_id", ":", "peer", "port"), '
           '"service_id", "$1", "service", "(.+)")')
EDGES = SERVICE.format(x=CLIENT)

nodes = (f'sum by (id, title, subTitle) (label_replace(label_replace(label_replace({EDGES}, '
         '"id", "$1", "client", "(.*)"), "title", "$1", "client", "(.*)"), "subTitle", "client", '
         '"client", ".*"))'
         f' or sum by (id, title, subTitle) (label_replace(label_replace(label_replace({EDGES}, '
         '"id", "$1", "service_id", "(.*)"), "title", "$1", "service_id", "(.*)"), "subTitle", '
         '"service", "service_id", ".*"))')
edges = (f'sum by (id, source, target) (label_join(label_replace(label_replace({EDGES}, '
         '"source", "$1", "client", "(.*)"), "target", "$1", "service_id", "(.*)"), '
         '"id", " -> ", "source", "target"))')


def target(expr, ref, **more):
    return {"datasource": DS, "editorMode": "code", "expr": expr, "refId": ref, **more}


def panel(pid, title, kind, targets, x, y, w, h, **more):
    return {"id": pid, "title": title, "type": kind, "datasource": DS,
            "gridPos": {"x": x, "y": y, "w": w, "h": h}, "targets": targets, **more}


table = {"format": "table", "instant": True, "range": False}
panels = [
    panel(1, "Who connects to what (open connections, outbound edges)", "nodeGraph",
          [target(nodes, "nodes", **table), target(edges, "edges", **table)], 0, 0, 16, 16,
          description="Clients (a pod, else a namespace: host, netns:...) and the services "
                      "they connect to (the agent's --services name, else peer:port); an "
                      "edge's value is its open connections. From nsnet_edge_connections."),
    panel(2, "Edges by user", "table",
          [target('sum by (user, namespace, pod, netns, peer, port, service, evidence) '
                  f'({OUT})', "A", **table)], 16, 0, 8, 16),
    panel(3, "Bytes sent per second, by user", "timeseries",
          [target('sum by (user) (rate(nsnet_edge_sent_bytes_total{direction="outbound", '
                  'node=~"$node"}[$__rate_interval]))', "A", legendFormat="{{user}}")],
          0, 16, 12, 8, fieldConfig={"defaults": {"unit": "Bps"}, "overrides": []}),
    panel(4, "Worst round-trip time, by service", "timeseries",
          [target('max by (peer, port, service) (nsnet_edge_rtt_seconds{direction="outbound", '
                  'node=~"$node"})', "A", legendFormat="{{service}} {{peer}}:{{port}}")],
          12, 16, 12, 8, fieldConfig={"defaults": {"unit": "s"}, "overrides": []}),
    panel(5, "Agents: samples per second", "timeseries",
          [target('sum by (instance) (rate(nsnet_samples_total[$__rate_interval]))', "A",
                  legendFormat="{{instance}}")], 0, 24, 8, 8),
    panel(6, "Agents: sample duration (p90)", "timeseries",
          [target('histogram_quantile(0.9, sum by (le, instance) '
                  '(rate(nsnet_sample_duration_seconds_bucket[$__rate_interval])))', "A",
                  legendFormat="{{instance}}")], 8, 24, 8, 8,
          fieldConfig={"defaults": {"unit": "s"}, "overrides": []}),
    panel(7, "Agents: resident memory", "timeseries",
          [target('max by (instance) (process_resident_memory_bytes '
                  '* on (instance, job) group_left () nsnet_build_info)', "A",
                  legendFormat="{{instance}}")], 16, 24, 8, 8,
          fieldConfig={"defaults": {"unit": "bytes"}, "overrides": []}),
    panel(8, "Agents: trouble over the range", "table",
          [target('sum by (instance) (increase(nsnet_sample_failures_total[$__range]))',
                  "failures", **table),
           target('sum by (instance) (increase(nsnet_samples_over_budget_total[$__range]))',
                  "over_budget", **table),
           target('sum by (instance) (increase(nsnet_destroy_events_dropped_total[$__range]))',
                  "events_dropped", **table),
           target('max by (instance) (nsnet_edge_series_dropped)', "series_folded", **table)],
          0, 32, 24, 6),
]
dashboard = {
    "title": "nsnet: who talks to whom", "uid": "nsnet-deps", "schemaVersion": 38,
    "editable": True, "time": {"from": "now-1h", "to": "now"}, "refresh": "1m",
    "tags": ["nsnet"], "panels": panels,
    "templating": {"list": [
        {"name": "DS_PROMETHEUS", "label": "data source", "type": "datasource",
         "query": "prometheus"},
        {"name": "node", "label": "node", "type": "query", "datasource": DS,
         "query": {"query": "label_values(nsnet_edge_last_seen_timestamp_seconds, node)",
                   "refId": "nodes"},
         "definition": "label_values(nsnet_edge_last_seen_timestamp_seconds, node)",
         "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2},
    ]},
}


def render() -> str:
    return json.dumps(dashboard, indent=2) + "\n"


if __name__ == "__main__":
    (HERE / "nsnet.json").write_text(render())
