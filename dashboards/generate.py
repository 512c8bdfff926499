#!/usr/bin/env python3
"""Writes dashboards/stowage.json, the Grafana dashboard of stowage.

Every panel queries only metric names stowage ships (README "Metrics"); CI loads each
expression into a real Prometheus that scrapes two controller replicas and the agents,
requires at least one series back and every metric named to exist (tests/e2e.rs,
every_dashboard_expression_returns_series_on_a_real_prometheus). The ledger's and NFS
mode's gauges come from the leading replica only; the queries still aggregate by their
labels (max by (node, pool)), so they read the same during a leader change. Per-node
figures are top-k tables and distributions, readable at 500 nodes. Edit this file, then run
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


def panel(title, kind, targets, unit, x, w, h=8, description="", thresholds=None):
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
    if thresholds is not None:
        p["fieldConfig"]["defaults"]["thresholds"] = {
            "mode": "absolute",
            "steps": [{"color": c, "value": v} for c, v in thresholds],
        }
        p["fieldConfig"]["defaults"]["color"] = {"mode": "thresholds"}
    if kind == "timeseries":
        p["options"] = {"legend": {"displayMode": "table", "placement": "bottom"},
                        "tooltip": {"mode": "multi"}}
    if kind == "stat":
        p["options"] = {"colorMode": "background", "graphMode": "none",
                        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
    _next_id[0] += 1
    panels.append(p)
    return p


# A count of problems: green at 0, red from 1.
PROBLEMS = [("green", None), ("red", 1)]


def health(title, expr, x, w, description, thresholds=PROBLEMS, unit="short"):
    """A health stat; `description` names the alert of deploy/monitoring it matches."""
    panel(title, "stat", [(expr, title)], unit, x, w, h=4, description=description,
          thresholds=thresholds)


def table(title, expr, unit, x, w, columns, sort_desc, description="", h=9):
    """An instant top-k table: one row per series, the label columns `columns`, then the
    value, sorted. It shows ten rows whether the cluster has 5 nodes or 500."""
    p = panel(title, "table", [(expr, "")], unit, x, w, h=h, description=description)
    for t in p["targets"]:
        t.update({"instant": True, "range": False, "format": "table"})
    p["options"] = {"showHeader": True, "cellHeight": "sm",
                    "sortBy": [{"displayName": "Value", "desc": sort_desc}]}
    p["transformations"] = [{"id": "organize", "options": {
        "excludeByName": {"Time": True},
        "indexByName": {**{c: i for i, c in enumerate(columns)}, "Value": len(columns)},
    }}]
    return p


def next_line(h=8):
    _y[0] += h


row("Health")
health("Leader", "sum(stowage_leader)", 0, 3,
       "Controller replicas holding the Lease: 1 is healthy, 0 means nothing is provisioned "
       "(alert StowageNoLeader).",
       thresholds=[("red", None), ("green", 1), ("red", 2)])
health("Pools not ready", "count(stowage_pool_ready == 0) or vector(0)", 3, 3,
       "Node pools that cannot take volumes; kubectl get sn <node> -o yaml says why "
       "(alert StowagePoolNotReady, after 10 min).")
health("Pools over 90 %",
       'count(stowage_pool_allocated_bytes{pool=~"$pool"} / (stowage_pool_allocatable_bytes{pool=~"$pool"} > 0) > 0.9) or vector(0)',
       6, 3, "Node pools more than 90 % allocated (alert StowagePoolNearlyFull, after 15 min); "
       "the table \"Fullest pools\" lists them.")
health("Stale agents", "count(max by (node) (stowage_node_heartbeat_age_seconds) > 90) or vector(0)", 9, 3,
       "Nodes whose agent last reported more than 90 s ago (alert StowageAgentHeartbeatStale, "
       "after 5 min); the table \"Oldest agent heartbeats\" lists them.")
health("Volumes on gone nodes", "sum(max by (node) (stowage_volumes_node_gone)) or vector(0)", 12, 3,
       "PVs whose Node object has been gone longer than --node-gone-grace (alert StowageNodeGone).")
health("NFS servers unreachable", "count(max by (server) (stowage_nfs_server_reachable) == 0) or vector(0)",
       15, 3, "NFS servers whose mount did not answer the last probe; new NFS volumes go to the "
       "others (alert StowageNfsServerUnreachable, after 5 min).")
health("Events dropped (1 h)", "sum(increase(stowage_events_dropped_total[1h]))", 18, 3,
       "Events the controller did not write because the API server was too slow "
       "(alert StowageEventsDropped).")
health("Extender errors", "sum(rate(stowage_extender_errors_total[5m]))", 21, 3,
       "Extender requests answered without a decision; the scheduler then places pods "
       "capacity-blind (alert StowageExtenderErrors, after 10 min).",
       unit="reqps", thresholds=[("green", None), ("red", 0.000001)])
next_line(4)

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

row("Nodes (top 10 of any number)")
SHARE = 'stowage_pool_allocated_bytes{pool=~"$pool"} / (stowage_pool_allocatable_bytes{pool=~"$pool"} > 0)'
table("Fullest pools", f"topk(10, max by (node, pool) ({SHARE}))", "percentunit", 0, 8,
      ["node", "pool"], True,
      description="The ten node pools with the largest share allocated (allocated / allocatable).")
table("Least room left (ledger)",
      'bottomk(10, max by (node, pool) (stowage_node_pool_free_bytes{pool=~"$pool"}))', "bytes", 8, 8,
      ["node", "pool"], False,
      description="The ten node pools a new claim finds least room in: allocatable - allocated "
      "- reserved, capped by the filesystem's free space for hostpath pools. Exported by the "
      "leading controller replica only.")
table("Oldest agent heartbeats", "topk(10, max by (node) (stowage_node_heartbeat_age_seconds))", "s", 16, 8,
      ["node"], True,
      description="Seconds since each node's agent last reported; above --stale-after the "
      "extender filters the node out, above 90 s StowageAgentHeartbeatStale fires.")
next_line(9)
panel("Allocated share across node pools", "timeseries",
      [(f"max({SHARE})", "max"),
       (f"quantile(0.9, {SHARE})", "p90"),
       (f"quantile(0.5, {SHARE})", "median"),
       (f"min({SHARE})", "min")],
      "percentunit", 0, 12,
      description="The distribution of allocated / allocatable over every node pool: four "
      "lines however many nodes there are.")
table("Least filesystem available",
      'bottomk(10, max by (node, pool) (stowage_pool_available_bytes{pool=~"$pool"}))', "bytes", 12, 12,
      ["node", "pool"], False, h=8,
      description="The ten node pools with the least free space on their filesystem, as the "
      "agents measure it.")
next_line()

row("Balance")
panel("Utilization coefficient of variation", "timeseries",
      [('max by (pool) (stowage_pool_utilization_cv{pool=~"$pool"})', "{{pool}}")], "short", 0, 12,
      description="Standard deviation over mean of node utilization per pool; lower is more even.")
panel("Utilization max - min", "timeseries",
      [('max by (pool) (stowage_pool_utilization_spread{pool=~"$pool"})', "{{pool}}")], "percentunit", 12, 12)
next_line()

row("NFS servers")
panel("Allocated by NFS server", "timeseries",
      [("max by (server) (stowage_nfs_server_allocated_bytes)", "{{server}}")], "bytes", 0, 12)
panel("Volumes by NFS server", "bargauge",
      [("max by (server) (stowage_nfs_server_volumes)", "{{server}}")], "short", 12, 12)
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
panel("Kubernetes API write errors", "timeseries",
      [("sum by (verb, code) (rate(stowage_api_write_errors_total[5m])) or vector(0)", "{{verb}} {{code}}")],
      "ops", 0, 24,
      description="Writes of every stowage process to the Kubernetes API answered with an error, "
      "by verb and HTTP status (transport: no answer). Each is retried; 409 is another writer "
      "being first and is normal in bursts, while 5xx, 429 or transport that stay point at the "
      "API server (alert StowageApiWriteErrors, after 15 min). A single unlabelled 0 until the "
      "first failed write.")
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
      "reqps", 0, 12)
panel("Capacity objects written (--publish-capacity)", "timeseries",
      [("sum by (op) (rate(stowage_capacity_objects_written_total[5m]))", "{{op}}"),
       ("sum by (op) (rate(stowage_capacity_write_errors_total[5m]))", "failed {{op}}")],
      "ops", 12, 12,
      description="CSIStorageCapacity objects the leading controller creates, updates and "
      "deletes for kube-scheduler's own capacity check, and the writes that failed (retried "
      "on the next pass). Flat at 0 without --publish-capacity.")
next_line()

dashboard = {
    "title": "stowage",
    "uid": "stowage",
    "description": "Health, capacity, the fullest nodes, balance, provisioning and the scheduler extender of stowage.",
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
