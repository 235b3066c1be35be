#!/usr/bin/env python3
"""One tenant's dashboard from Flowhouse's query API next to the same figures computed from a
Prefect server's own API (`make demo-prefect`).

    compare.py --prefect http://127.0.0.1:4200/api --flowhouse WORKSPACE_URL --key KEY --since T

Waits until Prefect's answers have been quiet for a few seconds and Flowhouse's equal them (at
most --timeout seconds), prints both side by side, and exits 0 if every figure is equal.
Standard library only.
"""

import argparse
import json
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter
from datetime import datetime, timedelta, timezone

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
FAILURE = {"FAILED", "CRASHED"}


def call(url, body=None, key=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    request.add_header("content-type", "application/json")
    if key:
        request.add_header("authorization", f"Bearer {key}")
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def parse(at):
    return datetime.fromisoformat(at.replace("Z", "+00:00")) if at else None


def paged(url, body, key=None):
    items = []
    while True:
        page = call(url, {**body, "limit": 200, "offset": len(items)}, key)
        items += page
        if len(page) < 200:
            return items


def event_count(url, since, until, key=None, page_size=50):
    page = call(f"{url}/events/filter", {"filter": {"occurred": {"since": since, "until": until}},
                                         "limit": page_size}, key)
    return page["total"]


def prefect_figures(api, since, until):
    start, end = parse(since), parse(until)
    runs = paged(f"{api}/flow_runs/filter", {})
    # Not the task runs standing for a subflow call (Prefect emits no events for them).
    tasks = paged(f"{api}/task_runs/filter", {"task_runs": {"subflow_runs": {"exists_": False}}})
    logs = paged(f"{api}/logs/filter", {})
    ended = [r for r in runs if r["state_type"] in TERMINAL
             and r["end_time"] and start <= parse(r["end_time"]) < end]
    failing = [r for r in ended if r["state_type"] in FAILURE]

    def top(field):
        counts = Counter(r[field] for r in failing if r.get(field))
        return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))

    return {
        "events": event_count(api, since, until),
        "log lines": len(logs),
        "runs by final state": dict(sorted(Counter(
            f"{r['state_type']}/{r['state_name']}" for r in ended).items())),
        "failure rate": f"{len(failing)}/{len(ended)}",
        "top failing flows": top("flow_id"),
        "top failing deployments": top("deployment_id"),
        "top failing work pools": top("work_pool_id"),
        "task runs by state type": dict(sorted(Counter(
            t["state_type"] for t in tasks if t["state_type"] in TERMINAL
            and t["end_time"] and start <= parse(t["end_time"]) < end).items())),
        "logs by level": dict(sorted(Counter(
            l["level"] for l in logs if start <= parse(l["timestamp"]) < end).items())),
    }


def flowhouse_figures(base, key, since, until):
    query = urllib.parse.urlencode({"since": since, "until": until})

    def metric(name, extra=""):
        return call(f"{base}/metrics/{name}?{query}{extra}", key=key)

    flow_runs = metric("flow-runs")

    def top(by):
        items = metric("top-failing", f"&by={by}&limit=100")["items"]
        return [(i["id"], i["failures"]) for i in items]

    logs, offset = 0, 0
    while True:
        page = call(f"{base}/logs/filter", {"limit": 200, "offset": offset}, key)
        logs += len(page)
        offset += len(page)
        if len(page) < 200:
            break
    return {
        "events": event_count(base, since, until, key, 200),
        "log lines": logs,
        "runs by final state": dict(sorted(
            (f"{s['state_type']}/{s['state_name']}", s["count"]) for s in flow_runs["by_state"])),
        "failure rate": f"{flow_runs['failures']}/{flow_runs['total']}",
        "top failing flows": top("flow"),
        "top failing deployments": top("deployment"),
        "top failing work pools": top("work-pool"),
        "task runs by state type": dict(sorted(
            (s["state_type"], s["count"]) for s in metric("task-runs")["by_state_type"]
            if s["count"])),
        "logs by level": dict(sorted(
            (l["level"], l["count"]) for l in metric("logs")["by_level"] if l["count"])),
    }


def show(value):
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ", ".join(f"{k[:8]}…: {v}" for k, v in value) or "-"
    return str(value)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefect", required=True)
    parser.add_argument("--flowhouse", required=True, help="the tenant's workspace URL")
    parser.add_argument("--key", required=True)
    parser.add_argument("--since", required=True)
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--runs", default="", help="flow run ids (comma-separated) to wait for "
                        "until they are in a final state")
    args = parser.parse_args()
    until = (datetime.now(timezone.utc) + timedelta(minutes=10)).isoformat()
    deadline = time.monotonic() + args.timeout
    for run in filter(None, args.runs.split(",")):
        while call(f"{args.prefect}/flow_runs/{run}")["state_type"] not in TERMINAL:
            if time.monotonic() > deadline:
                print(f"flow run {run} did not end in time", file=sys.stderr)
                return 1
            time.sleep(1)
    previous, quiet_since = None, time.monotonic()
    while True:
        theirs = prefect_figures(args.prefect, args.since, until)
        if theirs != previous:
            previous, quiet_since = theirs, time.monotonic()
        ours = flowhouse_figures(args.flowhouse, args.key, args.since, until)
        if (ours == theirs and time.monotonic() - quiet_since >= 5) or time.monotonic() > deadline:
            break
        time.sleep(1)
    width = max(len(k) for k in theirs)
    column = max(len(show(v)) for v in theirs.values()) + 2
    print(f"\n{'':{width}}  {'Prefect (its own API)':<{column}}  Flowhouse (query API)")
    for name in theirs:
        mark = "=" if theirs[name] == ours[name] else "≠"
        print(f"{name:{width}}  {show(theirs[name]):<{column}}{mark} {show(ours[name])}")
    equal = theirs == ours
    print("\nevery figure equal" if equal else "\nFIGURES DIFFER", flush=True)
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
