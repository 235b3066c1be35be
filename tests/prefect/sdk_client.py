"""A Prefect 3 SDK program pointed at Flowhouse, as a user would write it, for the tests in
tests/tests/prefect_sdk.rs. It uses only the SDK's own clients, configured from the environment
the test sets (PREFECT_API_URL, PREFECT_API_KEY or PREFECT_API_AUTH_STRING, maybe
PREFECT_CLOUD_API_URL), and prints one JSON report on stdout for the test to check. It asserts
nothing itself: the Rust test compares what was sent with what came back.

    python sdk_client.py key-only            try to open the events socket; report the error
    python sdk_client.py roundtrip TAG N     send N events and logs, read them back every way
    python sdk_client.py contract URL KEY    parse Flowhouse's answers with Prefect's models
"""

import asyncio
import json
import logging
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import LogCreate
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterLevel
from prefect.client.schemas.objects import Log
from prefect.client.schemas.responses import HistoryResponse
from prefect.client.schemas.events import EventPage
from prefect.events import Event
from prefect.events.clients import get_events_client, get_events_subscriber
from prefect.events.filters import EventFilter, EventNameFilter
from prefect.logging.clients import get_logs_subscriber
from prefect.logging.handlers import APILogHandler
from prefect.settings import PREFECT_API_URL

READ_TIMEOUT = 60.0


def report(value):
    print(json.dumps(value, default=str))


async def key_only():
    try:
        async with get_events_client(reconnection_attempts=0) as client:
            await client.emit(Event(event="flowhouse.test.never", resource={"prefect.resource.id": "x"}))
        report({"error": None})
    except Exception as error:  # the SDK raises a bare Exception with the close reason
        report({"error": str(error), "client": type(client_of()).__name__})


def client_of():
    return get_events_client(reconnection_attempts=0)


async def collect(subscriber_factory, until_count, into, started):
    """Iterates a subscriber until `until_count` items arrived (or the test times out)."""
    async with subscriber_factory() as subscriber:
        started.set()
        async for item in subscriber:
            into.append(item)
            if len(into) >= until_count:
                return


async def roundtrip(tag: str, count: int):
    flow_run_id = uuid.uuid4()
    names = [f"flowhouse.test.{tag}.{i % 3}" for i in range(count)]
    now = datetime.now(timezone.utc)
    events = [
        Event(
            occurred=now - timedelta(seconds=count - i),
            event=names[i],
            resource={
                "prefect.resource.id": f"prefect.flow-run.{flow_run_id}",
                "prefect.resource.name": f"run-{tag}",
            },
            related=[
                {"prefect.resource.id": f"prefect.flow.{uuid.UUID(int=7)}", "prefect.resource.role": "flow",
                 "prefect.resource.name": "etl"},
                {"prefect.resource.id": f"prefect.tag.{tag}", "prefect.resource.role": "tag"},
            ],
            payload={"i": i, "tag": tag},
        )
        for i in range(count)
    ]
    live_events, live_logs = [], []
    events_ready, logs_ready = asyncio.Event(), asyncio.Event()
    event_filter = EventFilter(event=EventNameFilter(prefix=[f"flowhouse.test.{tag}."]))
    log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
    subscribers = [
        asyncio.create_task(collect(lambda: get_events_subscriber(filter=event_filter), count,
                                    live_events, events_ready)),
        asyncio.create_task(collect(lambda: get_logs_subscriber(filter=log_filter), 2 * count,
                                    live_logs, logs_ready)),
    ]
    await asyncio.wait_for(asyncio.gather(events_ready.wait(), logs_ready.wait()), READ_TIMEOUT)

    started = time.monotonic()
    async with get_events_client() as client:
        for event in events:
            await client.emit(event)
    events_sent_s = time.monotonic() - started

    # Logs two ways: the client's create_logs, and a logger through the SDK's APILogHandler.
    levels = [5, 10, 20, 30, 40, 50]
    direct = [
        LogCreate(name=f"flowhouse.test.{tag}", level=levels[i % len(levels)], message=f"direct {i} {tag}",
                  timestamp=now + timedelta(milliseconds=i), flow_run_id=flow_run_id)
        for i in range(count)
    ]
    async with get_client() as client:
        await client.create_logs(direct)
    logger = logging.getLogger(f"flowhouse.sdk.{tag}")
    logger.setLevel(1)  # custom levels below DEBUG too
    logger.propagate = False
    logger.addHandler(APILogHandler())
    for i in range(count):
        logger.log(levels[i % len(levels)], "handler %d %s", i, tag, extra={"flow_run_id": flow_run_id})
    await APILogHandler.aflush()

    # Read back with the SDK's readers, waiting for ingest.
    read_events, read_logs, pages = [], [], 0
    deadline = time.monotonic() + READ_TIMEOUT
    async with get_client() as client:
        while time.monotonic() < deadline:
            page = await client.read_events(filter=event_filter, limit=7)
            found, pages = list(page.events), 1
            while page.next_page:
                page = await page.get_next_page(client)
                found.extend(page.events)
                pages += 1
            read_events = found
            if len(found) >= count:
                break
            await asyncio.sleep(0.5)
        while time.monotonic() < deadline:
            read_logs = await client.read_logs(log_filter=log_filter, limit=200)
            if len(read_logs) >= 2 * count:
                break
            await asyncio.sleep(0.5)
        errors_only = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]),
                                 level=LogFilterLevel(ge_=40)))
    try:
        await asyncio.wait_for(asyncio.gather(*subscribers), READ_TIMEOUT)
    except asyncio.TimeoutError:
        for task in subscribers:
            task.cancel()

    def event_view(e):
        return {"id": str(e.id), "event": e.event, "occurred": e.occurred.isoformat(),
                "resource": dict(e.resource.root), "related": [dict(r.root) for r in e.related],
                "payload": e.payload}

    def log_view(log):
        return {"name": log.name, "level": log.level, "message": log.message,
                "flow_run_id": str(log.flow_run_id), "timestamp": log.timestamp.isoformat()}

    report({
        "api_url": PREFECT_API_URL.value(),
        "events_client": type(client_of()).__name__,
        "events_sent_seconds": events_sent_s,
        "sent_events": [event_view(e) for e in events],
        "read_events": [event_view(e) for e in read_events],
        "event_pages": pages,
        "live_events": [event_view(e) for e in live_events],
        "sent_logs": [log_view(LogCreate.model_validate(l.model_dump())) for l in direct]
                     + [{"name": f"flowhouse.sdk.{tag}", "level": levels[i % len(levels)],
                         "message": f"handler {i} {tag}", "flow_run_id": str(flow_run_id)}
                        for i in range(count)],
        "read_logs": [log_view(log) for log in read_logs],
        "read_logs_ge_40": [log_view(log) for log in errors_only],
        "live_logs": [log_view(log) for log in live_logs],
    })


async def contract(base: str, key: str):
    """Posts to Flowhouse's read routes and parses each answer with Prefect's own models."""
    import httpx

    now = datetime.now(timezone.utc)
    results = {}
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"},
                                 timeout=30) as http:
        checks = {
            "EventPage": ("/events/filter", {"filter": {"event": {"prefix": ["flowhouse.test."]}}, "limit": 5},
                          lambda body: EventPage.model_validate(body)),
            "EventCount(time)": ("/events/count-by/time",
                                 {"filter": {"occurred": {"since": (now - timedelta(hours=2)).isoformat()}},
                                  "time_unit": "minute", "time_interval": 10},
                                 lambda body: [validate_event_count(c) for c in body]),
            "EventCount(event)": ("/events/count-by/event", {"filter": {}},
                                  lambda body: [validate_event_count(c) for c in body]),
            "Log": ("/logs/filter", {"logs": None, "limit": 5, "offset": None},
                    lambda body: Log.model_validate_list(body)),
            "HistoryResponse": ("/flow_runs/history",
                                {"history_start": (now - timedelta(hours=1)).isoformat(),
                                 "history_end": now.isoformat(), "history_interval_seconds": 600},
                                lambda body: [HistoryResponse.model_validate(h) for h in body]),
        }
        for name, (path, body, parse) in checks.items():
            response = await http.post(path, json=body)
            entry = {"status": response.status_code}
            try:
                parsed = parse(response.json())
                entry["parsed"] = len(parsed) if isinstance(parsed, list) else 1
            except Exception as error:
                entry["error"] = str(error)
            results[name] = entry
    report(results)


def validate_event_count(body):
    from prefect.server.events.schemas.events import EventCount
    return EventCount.model_validate(body)


def main(argv):
    mode = argv[1]
    if mode == "key-only":
        asyncio.run(key_only())
    elif mode == "roundtrip":
        asyncio.run(roundtrip(argv[2], int(argv[3])))
    elif mode == "contract":
        asyncio.run(contract(argv[2], argv[3]))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv)
