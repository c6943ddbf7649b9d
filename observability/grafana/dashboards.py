#!/usr/bin/env python3
"""Generates the Grafana dashboards in observability/grafana/dashboards/.

The JSON files are the deployed artefact (Grafana loads them as provisioned dashboards); this
script is their source, so panels stay consistent (datasource by uid, units, legends) and every
query is reviewable in one place. After editing: python3 observability/grafana/dashboards.py
swarm/check.sh fails when the JSON differs from what this script produces.
Usage: dashboards.py [OUTPUT_DIR]   (default: the dashboards/ folder beside this script)
"""
import json
import os
import sys
PROM = {"type": "prometheus", "uid": "prometheus"}
LOKI = {"type": "loki", "uid": "loki"}

class Dash:
    def __init__(self, uid, title, tags, desc, variables=()):
        self.uid, self.title, self.tags, self.desc = uid, title, tags, desc
        self.panels, self.y, self.x, self.row_h, self.next_id = [], 0, 0, 0, 1
        self.variables = list(variables)
    def _pos(self, w, h):
        if self.x + w > 24:
            self.x, self.y = 0, self.y + self.row_h
            self.row_h = 0
        pos = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos
    def row(self, title):
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        self.panels.append({"id": self.next_id, "type": "row", "title": title, "collapsed": False,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.next_id += 1
        self.y += 1
    def panel(self, kind, title, targets, unit="short", w=12, h=8, desc="", ds=PROM, extra_defaults=None, options=None):
        t = []
        for i, tg in enumerate(targets):
            expr, legend = tg if isinstance(tg, tuple) else (tg, "")
            item = {"refId": chr(65 + i), "datasource": ds, "expr": expr}
            if ds is PROM:
                item["legendFormat"] = legend or "__auto"
                item["range"] = True
            else:
                item["queryType"] = "range"
            t.append(item)
        defaults = {"unit": unit}
        if kind == "timeseries":
            defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
                                  "showPoints": "never", "spanNulls": False}
        if extra_defaults:
            defaults.update(extra_defaults)
        p = {"id": self.next_id, "type": kind, "title": title, "description": desc,
             "datasource": ds, "gridPos": self._pos(w, h), "targets": t,
             "fieldConfig": {"defaults": defaults, "overrides": []}}
        if options is not None:
            p["options"] = options
        elif kind == "timeseries":
            p["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                            "tooltip": {"mode": "multi", "sort": "desc"}}
        elif kind == "stat":
            p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                            "colorMode": "value", "graphMode": "area", "textMode": "auto"}
        self.next_id += 1
        self.panels.append(p)
    def ts(self, title, targets, unit="short", **kw):
        self.panel("timeseries", title, targets, unit, **kw)
    def stat(self, title, expr, unit="short", thresholds=None, **kw):
        extra = {}
        if thresholds:
            extra["thresholds"] = {"mode": "absolute", "steps": thresholds}
            extra["color"] = {"mode": "thresholds"}
        self.panel("stat", title, [expr], unit, w=kw.pop("w", 6), h=kw.pop("h", 4), extra_defaults=extra, **kw)
    def logs(self, title, expr, **kw):
        self.panel("logs", title, [expr], ds=LOKI, w=24, h=10,
                   options={"showTime": True, "wrapLogMessage": True, "sortOrder": "Descending",
                            "enableLogDetails": True, "dedupStrategy": "none"}, **kw)
    def dump(self, path):
        d = {"uid": self.uid, "title": self.title, "description": self.desc, "tags": self.tags,
             "editable": False, "graphTooltip": 1, "timezone": "browser", "schemaVersion": 39,
             "version": 1, "refresh": "30s", "time": {"from": "now-3h", "to": "now"},
             "fiscalYearStartMonth": 0, "liveNow": False, "weekStart": "",
             "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                       "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                                       "name": "Annotations & Alerts", "type": "dashboard"}]},
             "links": [{"title": "Booking platform", "type": "dashboards", "tags": ["booking"], "asDropdown": True}],
             "templating": {"list": self.variables}, "panels": self.panels}
        with open(path, "w") as f:
            json.dump(d, f, indent=2)
            f.write("\n")

def var(name, label, query, multi=True):
    return {"name": name, "label": label, "type": "query", "datasource": PROM,
            "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "definition": query, "refresh": 2, "includeAll": True, "multi": multi,
            "allValue": ".*", "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "sort": 1, "hide": 0}

GREEN, RED, YELLOW = "green", "red", "yellow"
def steps(*pairs):
    return [{"color": c, "value": v} for v, c in pairs]

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboards")

# ------------------------------------------------------------------ gateway
g = Dash("booking-gateway", "Gateway (resgate-rs)", ["booking", "gateway"],
         "WebSocket/HTTP gateway: connections, subscriptions, events, latency, slow-client drops and its NATS link.",
         [var("instance", "Instance", 'label_values(up{job="resgate-rs"}, instance)')])
I = 'job="resgate-rs", instance=~"$instance"'
g.row("Overview")
g.stat("Gateways up", f'count(up{{job="resgate-rs"}} == 1)', thresholds=steps((None, RED), (2, GREEN)))
g.stat("Open WebSocket connections", f'sum(resgate_ws_current_connections{{{I}}})')
g.stat("Active subscriptions", f'sum(resgate_cache_subscriptions{{{I}}})')
g.stat("NATS connected (min over instances)", f'min(resgate_nats_connected{{{I}}})',
       thresholds=steps((None, RED), (1, GREEN)))
g.row("Connections and subscriptions")
g.ts("WebSocket connections", [(f'sum by (instance) (resgate_ws_current_connections{{{I}}})', "{{instance}}")])
g.ts("New WebSocket connections /s", [(f'sum by (instance) (rate(resgate_ws_connections_total{{{I}}}[$__rate_interval]))', "{{instance}}")], unit="reqps")
g.ts("Subscriptions", [(f'sum by (instance) (resgate_cache_subscriptions{{{I}}})', "{{instance}}")])
g.ts("Cached resources", [(f'sum by (instance) (resgate_cache_resources{{{I}}})', "{{instance}}")])
g.row("Traffic")
g.ts("WebSocket requests /s by method", [(f'sum by (method) (rate(resgate_ws_requests_total{{{I}}}[$__rate_interval]))', "{{method}}")], unit="reqps")
g.ts("HTTP API requests /s by method", [(f'sum by (method) (rate(resgate_http_requests_total{{{I}}}[$__rate_interval]))', "{{method}}")], unit="reqps")
g.ts("Events /s (received from services vs delivered to clients)", [
    (f'sum(rate(resgate_events_received_total{{{I}}}[$__rate_interval]))', "received"),
    (f'sum(rate(resgate_event_deliveries_total{{{I}}}[$__rate_interval]))', "delivered")], unit="ops",
    desc="Delivered/received is the fan-out: how many client deliveries one service event causes.")
g.ts("Slow-client drops and NATS trouble (per minute)", [
    (f'sum(rate(resgate_slow_client_disconnects_total{{{I}}}[$__rate_interval])) * 60', "slow clients dropped"),
    (f'sum(rate(resgate_nats_slow_consumer_total{{{I}}}[$__rate_interval])) * 60', "NATS slow consumer"),
    (f'sum(rate(resgate_nats_reconnects_total{{{I}}}[$__rate_interval])) * 60', "NATS reconnects")])
g.row("Latency")
g.ts("Client request latency by method (p50 / p99)", [
    (f'histogram_quantile(0.5, sum by (le, method) (rate(resgate_client_request_duration_seconds_bucket{{{I}}}[$__rate_interval])))', "p50 {{method}}"),
    (f'histogram_quantile(0.99, sum by (le, method) (rate(resgate_client_request_duration_seconds_bucket{{{I}}}[$__rate_interval])))', "p99 {{method}}")], unit="s")
g.ts("Gateway → service request latency by kind (p50 / p99)", [
    (f'histogram_quantile(0.5, sum by (le, kind) (rate(resgate_nats_request_duration_seconds_bucket{{{I}}}[$__rate_interval])))', "p50 {{kind}}"),
    (f'histogram_quantile(0.99, sum by (le, kind) (rate(resgate_nats_request_duration_seconds_bucket{{{I}}}[$__rate_interval])))', "p99 {{kind}}")], unit="s")
g.ts("Client requests /s by method (from the latency histogram)", [
    (f'sum by (method) (rate(resgate_client_request_duration_seconds_count{{{I}}}[$__rate_interval]))', "{{method}}")], unit="reqps")
g.ts("Mean client request latency", [
    (f'sum(rate(resgate_client_request_duration_seconds_sum{{{I}}}[$__rate_interval])) / sum(rate(resgate_client_request_duration_seconds_count{{{I}}}[$__rate_interval]))', "mean")], unit="s")
g.row("Process")
g.ts("Resident memory", [(f'process_resident_memory_bytes{{{I}}}', "{{instance}}")], unit="bytes", w=8)
g.ts("CPU (cores)", [(f'rate(process_cpu_seconds_total{{{I}}}[$__rate_interval])', "{{instance}}")], unit="short", w=8)
g.ts("Open file descriptors", [(f'process_open_fds{{{I}}}', "{{instance}}")], w=8)
g.row("Logs")
g.logs("Gateway warnings and errors", '{service=~".+_resgate-rs", level=~"warn|error"}')
g.dump(f"{out}/gateway.json")

# ------------------------------------------------------------------ nats
n = Dash("booking-nats", "NATS cluster", ["booking", "nats"],
         "The three-node NATS cluster (prometheus-nats-exporter) and the gateway's view of it.",
         [var("server", "Server", 'label_values(gnatsd_varz_connections, server_id)')])
S = 'server_id=~"$server"'
n.row("Cluster health")
n.stat("Nodes reporting", 'count(gnatsd_varz_connections)', thresholds=steps((None, RED), (3, GREEN)))
n.stat("Min routes per node", 'min(gnatsd_varz_routes)', thresholds=steps((None, RED), (2, GREEN)))
n.stat("Client connections", f'sum(gnatsd_varz_connections{{{S}}})')
n.stat("Slow consumers (last hour)", f'sum(increase(gnatsd_varz_slow_consumers{{{S}}}[1h]))',
       thresholds=steps((None, GREEN), (1, YELLOW), (10, RED)))
n.row("Traffic")
n.ts("Messages in /s", [(f'rate(gnatsd_varz_in_msgs{{{S}}}[$__rate_interval])', "{{server_id}}")], unit="ops")
n.ts("Messages out /s", [(f'rate(gnatsd_varz_out_msgs{{{S}}}[$__rate_interval])', "{{server_id}}")], unit="ops")
n.ts("Bytes in /s", [(f'rate(gnatsd_varz_in_bytes{{{S}}}[$__rate_interval])', "{{server_id}}")], unit="Bps")
n.ts("Bytes out /s", [(f'rate(gnatsd_varz_out_bytes{{{S}}}[$__rate_interval])', "{{server_id}}")], unit="Bps")
n.row("Clients and routes")
n.ts("Client connections", [(f'gnatsd_varz_connections{{{S}}}', "{{server_id}}")], w=8)
n.ts("Subscriptions", [(f'gnatsd_varz_subscriptions{{{S}}}', "{{server_id}}")], w=8)
n.ts("Cluster routes", [(f'gnatsd_varz_routes{{{S}}}', "{{server_id}}")], w=8)
n.ts("Slow consumers (increase)", [(f'increase(gnatsd_varz_slow_consumers{{{S}}}[$__rate_interval])', "{{server_id}}")])
n.ts("Gateway NATS link", [
    ('min by (instance) (resgate_nats_connected{job="resgate-rs"})', "connected {{instance}}"),
    ('sum by (instance) (increase(resgate_nats_reconnects_total{job="resgate-rs"}[$__rate_interval]))', "reconnects {{instance}}")])
n.row("Resources")
n.ts("Memory", [(f'gnatsd_varz_mem{{{S}}}', "{{server_id}}")], unit="bytes")
n.ts("CPU %", [(f'gnatsd_varz_cpu{{{S}}}', "{{server_id}}")], unit="percent")
n.dump(f"{out}/nats.json")

# ------------------------------------------------------------------ booking
b = Dash("booking-services", "Booking and services", ["booking", "services"],
         "Seat holds, sales, orders and payment failures; RES service traffic, errors and latency; identity.",
         [var("service", "Service", 'label_values(res_service_requests_total, service)')])
V = 'service=~"$service"'
b.row("Booking")
b.stat("Active seat holds", 'sum(booking_active_holds)')
b.stat("Seats sold (24h)", 'sum(increase(booking_seats_sold_total[24h]))')
b.stat("Payment failure ratio (1h)",
       'sum(increase(booking_payment_failures_total[1h])) / sum(increase(booking_orders_total{status=~"placed|declined"}[1h]))',
       unit="percentunit", thresholds=steps((None, GREEN), (0.05, YELLOW), (0.1, RED)))
b.stat("Hold expiry ratio (1h)",
       'sum(increase(booking_holds_expired_total[1h])) / sum(increase(booking_holds_created_total[1h]))',
       unit="percentunit", thresholds=steps((None, GREEN), (0.3, YELLOW), (0.5, RED)))
b.ts("Seat holds per minute", [
    ('sum(rate(booking_holds_created_total[$__rate_interval])) * 60', "created"),
    ('sum(rate(booking_holds_released_total[$__rate_interval])) * 60', "released"),
    ('sum(rate(booking_holds_expired_total[$__rate_interval])) * 60', "expired")])
b.ts("Active holds", [('sum(booking_active_holds)', "active holds")])
b.ts("Orders per minute by status", [('sum by (status) (rate(booking_orders_total[$__rate_interval])) * 60', "{{status}}")])
b.ts("Seats sold and payment failures per minute", [
    ('sum(rate(booking_seats_sold_total[$__rate_interval])) * 60', "seats sold"),
    ('sum(rate(booking_payment_failures_total[$__rate_interval])) * 60', "payment failures")])
b.row("Sale load (the figures of resbench sale, BENCHMARKS.md)")
BOOKED = 'sum(rate(booking_orders_total{status="placed"}[5m]))'
b.stat("Completed bookings /s (5m)", BOOKED, unit="reqps", w=6)
b.stat("Holds + releases /s (5m)",
       'sum(rate(booking_holds_created_total[5m])) + sum(rate(booking_holds_released_total[5m]))', unit="reqps", w=6)
b.stat("Hold p99 (5m)",
       'histogram_quantile(0.99, sum by (le) (rate(res_service_call_duration_seconds_bucket{service="seats", method="hold"}[5m])))',
       unit="s", thresholds=steps((None, GREEN), (0.25, YELLOW), (1, RED)), w=6)
b.stat("Timeouts and busy replies (5m)",
       'sum(increase(res_service_errors_total{code=~"system.timeout|booking.busy"}[5m]))',
       thresholds=steps((None, GREEN), (1, RED)), w=6,
       desc="Requests the services could not finish before the caller's deadline. 0 on a good sale day.")
b.ts("Bookings, holds and releases /s", [
    (BOOKED.replace("[5m]", "[$__rate_interval]"), "bookings"),
    ('sum(rate(booking_holds_created_total[$__rate_interval]))', "holds"),
    ('sum(rate(booking_holds_released_total[$__rate_interval]))', "releases"),
    ('sum(rate(booking_holds_expired_total[$__rate_interval]))', "expired (nobody paid or released)")], unit="reqps")
b.ts("Latency per action (p50 / p99)", [
    ('histogram_quantile(0.5, sum by (le, method) (rate(res_service_call_duration_seconds_bucket{service=~"seats|tickets", method!="unknown"}[$__rate_interval])))', "p50 {{method}}"),
    ('histogram_quantile(0.99, sum by (le, method) (rate(res_service_call_duration_seconds_bucket{service=~"seats|tickets", method!="unknown"}[$__rate_interval])))', "p99 {{method}}")],
    unit="s", desc="Service time of hold, release, purchase and cancel (from the request's arrival to its reply).")
b.ts("Seat transitions per published batch (group commit)", [
    ('sum(rate(booking_transition_batch_size_sum[$__rate_interval])) / sum(rate(booking_transition_batch_size_count[$__rate_interval]))', "mean"),
    ('histogram_quantile(0.99, sum by (le) (rate(booking_transition_batch_size_bucket[$__rate_interval])))', "p99")],
    desc="Holds, releases and sales of one departure published together under one lease. Near 1 when quiet; it grows with the queue on a sale day (at most 32).")
b.ts("Error replies /s by code", [
    ('sum by (service, code) (rate(res_service_errors_total[$__rate_interval]))', "{{service}} {{code}}")], unit="reqps",
    desc="Refusals (booking.seatTaken, paymentDeclined) are normal on a sale day; system.timeout and booking.busy are not.")
b.ts("CPU seconds per booking by process", [
    ('sum by (job) (rate(process_cpu_seconds_total{job=~"resgate-rs|catalog|seats|pricing|tickets|reports|identity-auth"}[5m])) / scalar(' + BOOKED + ')', "{{job}}"),
    ('max(gnatsd_varz_cpu) / 100 / scalar(' + BOOKED + ')', "nats-server")], unit="s",
    desc="CPU spent per completed booking over 5 minutes (all traffic counted, watchers included).")
b.row("Durable events (outbox → JetStream BOOKING_EVENTS → reports)")
b.stat("Relay lag: oldest unsent event", 'max(booking_outbox_oldest_unsent_seconds)', unit="s",
       thresholds=steps((None, GREEN), (10, YELLOW), (60, RED)))
b.stat("Unsent outbox events", 'max(booking_outbox_pending)')
b.stat("Reports consumer pending", 'max(reports_consumer_pending)',
       thresholds=steps((None, GREEN), (100, YELLOW), (1000, RED)))
b.stat("Relay leaders", 'sum(booking_outbox_relay_leader)', thresholds=steps((None, RED), (1, GREEN), (2, RED)))
b.ts("Outbox relay lag (age of the oldest unsent event)", [('max(booking_outbox_oldest_unsent_seconds)', "lag")], unit="s",
     desc="0 while the relay keeps up. Grows when NATS/JetStream is unreachable or no instance holds the relay lock.")
b.ts("Events published and applied per minute", [
    ('sum(rate(booking_outbox_published_total[$__rate_interval])) * 60', "published (relay)"),
    ('sum(rate(reports_events_applied_total[$__rate_interval])) * 60', "applied (reports)"),
    ('sum(rate(reports_events_duplicate_total[$__rate_interval])) * 60', "redelivered, already applied")])
b.ts("Reports consumer backlog", [
    ('max(reports_consumer_pending)', "pending (not delivered)"),
    ('max(reports_consumer_ack_pending)', "delivered, not acked")],
    desc="Events in BOOKING_EVENTS the reports consumer has not processed yet.")
b.ts("Unsent outbox events", [('max(booking_outbox_pending)', "unsent")])
b.row("RES services")
b.ts("Instances up", [('sum by (job) (up{job=~"catalog|seats|pricing|tickets|reports|identity-auth"})', "{{job}}")], w=8)
b.ts("Requests /s by service", [(f'sum by (service) (rate(res_service_requests_total{{{V}}}[$__rate_interval]))', "{{service}}")], unit="reqps", w=8)
b.ts("Error ratio by service", [
    (f'sum by (service) (rate(res_service_requests_total{{{V}, result="error"}}[$__rate_interval])) / sum by (service) (rate(res_service_requests_total{{{V}}}[$__rate_interval]))', "{{service}}")],
    unit="percentunit", w=8)
b.ts("p99 latency by service and kind", [
    (f'histogram_quantile(0.99, sum by (le, service, kind) (rate(res_service_request_duration_seconds_bucket{{{V}}}[$__rate_interval])))', "{{service}} {{kind}}")], unit="s")
b.ts("Requests /s by kind and result", [
    (f'sum by (kind, result) (rate(res_service_requests_total{{{V}}}[$__rate_interval]))', "{{kind}} {{result}}")], unit="reqps")
b.row("Identity")
b.ts("Auth requests /s by result", [('sum by (result) (rate(identity_auth_requests_total[$__rate_interval]))', "{{result}}")], unit="reqps")
b.ts("JWKS refreshes (per hour)", [('sum(increase(identity_jwks_refresh_total[1h]))', "refreshes")])
b.row("Process")
b.ts("Resident memory by service", [('sum by (job) (process_resident_memory_bytes{job=~"catalog|seats|pricing|tickets|reports|identity-auth"})', "{{job}}")], unit="bytes")
b.ts("CPU (cores) by service", [('sum by (job) (rate(process_cpu_seconds_total{job=~"catalog|seats|pricing|tickets|reports|identity-auth"}[$__rate_interval]))', "{{job}}")])
b.row("Logs")
b.logs("Service errors", '{service=~".+_(catalog|seats|pricing|tickets|reports|identity-auth)", level=~"warn|error"}')
b.dump(f"{out}/booking.json")
