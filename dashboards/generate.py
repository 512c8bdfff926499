#!/usr/bin/env python3
"""Writes dashboards/stowage.json, the Grafana dashboard of stowage.

Every panel queries only metric names stowage ships (README "Metrics"); CI loads each
expression into a real Prometheus that scrapes a running controller and agents and
requires at least one series back (tests/prometheus.rs). Edit this file, then run
`python3 dashboards/generate.py`; CI fails when stowage.json is stale.
"""
import json
import pathlib

DS = {"type": "prometheus", "uid": "${datasource}"}
panels = []
_next_id = [1]
_y = [0]


def row(title):
    panels.append({"type": "row", "title": title, "id": _next_id[0], "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": _y[0]}, "panels": []})
    _next_id[0] += 1
    _y[0] += 1


def panel(title, kind, targets, unit, x, w, h=8, description=""):
    p = {
        "type": kind,
        "title": title,
        "description": description,
        "id": _next_id[0],
        "datasource": DS,
        "gridPos": {"h": h, "w": w, "x": x, "y": _y[0]},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(targets)
        ],
    }
    if kind == "timeseries":
        p["options"] = {"legend": {"displayMode": "table", "placement": "bottom"},
                        "tooltip": {"mode": "multi"}}
    _next_id[0] += 1
    panels.append(p)
    return p


def next_line(h=8):
    _y[0] += h


row("Cluster capacity")
panel("Allocatable", "stat", [('sum(stowage_pool_allocatable_bytes{pool=~"$pool"})', "allocatable")], "bytes", 0, 6,
      description="Capacity minus the configured reserve, over every agent's pools.")
panel("Allocated", "stat", [('sum(stowage_pool_allocated_bytes{pool=~"$pool"})', "allocated")], "bytes", 6, 6,
      description="Sum of the sizes of all LocalVolumes.")
panel("Allocated share", "gauge",
      [('sum(stowage_pool_allocated_bytes{pool=~"$pool"}) / clamp_min(sum(stowage_pool_allocatable_bytes{pool=~"$pool"}), 1)', "allocated / allocatable")],
      "percentunit", 12, 6)
panel("Volumes and orphans", "stat",
      [('sum(stowage_pool_volumes{pool=~"$pool"})', "volumes"), ('sum(stowage_pool_orphans{pool=~"$pool"})', "orphans")],
      "short", 18, 6,
      description="Orphans are volume directories on disk with no LocalVolume; stowage never deletes them.")
next_line()

row("Per-node utilization")
panel("Utilization by node and pool", "timeseries",
      [('stowage_pool_allocated_bytes{pool=~"$pool"} / clamp_min(stowage_pool_allocatable_bytes{pool=~"$pool"}, 1)', "{{node}}/{{pool}}")],
      "percentunit", 0, 12)
panel("Free space the ledger sees", "timeseries",
      [('stowage_node_pool_free_bytes{pool=~"$pool"}', "{{node}}/{{pool}}")], "bytes", 12, 12,
      description="allocatable - allocated - reserved, capped by the filesystem's free space for hostpath pools.")
next_line()
panel("Filesystem available", "timeseries",
      [('stowage_pool_available_bytes{pool=~"$pool"}', "{{node}}/{{pool}}")], "bytes", 0, 12)
panel("Agent heartbeat age", "timeseries",
      [("stowage_node_heartbeat_age_seconds", "{{node}}")], "s", 12, 12,
      description="Seconds since each node's agent last reported; above --stale-after the extender filters the node out.")
next_line()

row("Balance")
panel("Utilization coefficient of variation", "timeseries",
      [('stowage_pool_utilization_cv{pool=~"$pool"}', "{{pool}}")], "short", 0, 12,
      description="Standard deviation over mean of node utilization per pool; lower is more even.")
panel("Utilization max - min", "timeseries",
      [('stowage_pool_utilization_spread{pool=~"$pool"}', "{{pool}}")], "percentunit", 12, 12)
next_line()

row("NFS servers")
panel("Allocated by NFS server", "timeseries",
      [("stowage_nfs_server_allocated_bytes", "{{server}}")], "bytes", 0, 12)
panel("Volumes by NFS server", "bargauge",
      [("stowage_nfs_server_volumes", "{{server}}")], "short", 12, 12)
next_line()

row("Provisioning")
panel("Provisioning latency (claim with node -> PV)", "timeseries",
      [("histogram_quantile(0.5, sum by (le) (rate(stowage_provision_duration_seconds_bucket[5m])))", "p50"),
       ("histogram_quantile(0.99, sum by (le) (rate(stowage_provision_duration_seconds_bucket[5m])))", "p99")],
      "s", 0, 12)
panel("Provisions and deletions", "timeseries",
      [("sum by (result) (rate(stowage_provisions_total[5m]))", "provision {{result}}"),
       ("sum by (result) (rate(stowage_deletions_total[5m]))", "delete {{result}}")], "ops", 12, 12)
next_line()
panel("Reschedules", "timeseries",
      [("sum by (reason) (increase(stowage_reschedules_total[1h]))", "{{reason}}")], "short", 0, 12,
      description="Claims whose selected-node was removed because the node could not hold them after all.")
panel("Agent operations", "timeseries",
      [("sum by (operation, result) (rate(stowage_agent_operations_total[5m]))", "{{operation}} {{result}}")],
      "ops", 12, 12)
next_line()

row("Scheduler extender")
panel("Extender latency", "timeseries",
      [("histogram_quantile(0.5, sum by (le, verb) (rate(stowage_extender_request_duration_seconds_bucket[5m])))", "p50 {{verb}}"),
       ("histogram_quantile(0.99, sum by (le, verb) (rate(stowage_extender_request_duration_seconds_bucket[5m])))", "p99 {{verb}}")],
      "s", 0, 12)
panel("Nodes filtered out, by reason", "timeseries",
      [("sum by (reason) (increase(stowage_extender_nodes_filtered_total[1h]))", "{{reason}}")], "short", 12, 12)
next_line()
panel("Extender requests and errors", "timeseries",
      [("sum by (verb, code) (rate(stowage_extender_requests_total[5m]))", "{{verb}} {{code}}"),
       ("sum by (verb) (rate(stowage_extender_errors_total[5m]))", "errors {{verb}}"),
       ("rate(stowage_extender_pods_passed_through_total[5m])", "passed through")],
      "reqps", 0, 24)
next_line()

dashboard = {
    "title": "stowage",
    "uid": "stowage",
    "description": "Capacity, balance, provisioning and the scheduler extender of stowage.",
    "tags": ["stowage", "storage", "kubernetes"],
    "editable": True,
    "schemaVersion": 39,
    "version": 1,
    "time": {"from": "now-6h", "to": "now"},
    "refresh": "30s",
    "templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
        {"name": "pool", "type": "query", "datasource": DS, "label": "Pool",
         "query": {"query": "label_values(stowage_pool_allocatable_bytes, pool)", "refId": "pool"},
         "definition": "label_values(stowage_pool_allocatable_bytes, pool)",
         "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2,
         "current": {"text": "All", "value": "$__all"}},
    ]},
    "panels": panels,
}

out = pathlib.Path(__file__).with_name("stowage.json")
out.write_text(json.dumps(dashboard, indent=2) + "\n")
