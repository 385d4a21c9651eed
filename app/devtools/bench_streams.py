"""`chainline bench`'s figures for live streams: clients hold the global event stream
open on the stack's one API process while executions run, and each frame's delay is its
arrival at the client minus its event's timestamp (Postgres's clock, taken inside the
transaction that wrote it, before its commit; on the same host). The clients read
over bare sockets, so that little of the figure is the bench's own work. First one client
alone, then C at once (all on this machine's cores, the bench's clients included);
meanwhile `GET /healthz` and a workflow listing are timed, to show that the open
streams hold up no other request. Targets: p50 < 50 ms from event to frame; 200
clients on one API process.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg

from app.devtools.measuring import percentile, wait_for

MEASURED_EVERY = 10


@dataclass(frozen=True)
class StreamBenchConfig:
    clients: int = 200
    executions: int = 50
    timeout: float = 120.0


class _Clients:
    """C stream clients on an event loop of their own, in a thread."""

    def __init__(self, api_url: str, start_after: int, count: int) -> None:
        self.api_url = api_url
        self.start_after = start_after
        self.count = count
        self.delays: list[float] = []
        self.completed: set[str] = set()
        self.opened = threading.Semaphore(0)
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.tasks: list[asyncio.Task[None]] = []
        self.thread = threading.Thread(
            target=lambda: self.loop.run_until_complete(self._all()), daemon=True
        )

    def start(self, timeout: float) -> None:
        self.thread.start()
        for _ in range(self.count):
            if not self.opened.acquire(timeout=timeout):
                raise RuntimeError("the stream clients did not all connect")

    def stop(self, timeout: float) -> None:
        self.loop.call_soon_threadsafe(lambda: [task.cancel() for task in self.tasks])
        self.thread.join(timeout=timeout)
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    async def _all(self) -> None:
        self.tasks.extend(asyncio.create_task(self._client(i)) for i in range(self.count))
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _client(self, index: int) -> None:
        """One stream, read over a bare socket: an HTTP client library's own work per
        chunk, times 200 clients on the bench's shared cores, was most of what the
        figure measured."""
        url = httpx.URL(self.api_url)
        reader, writer = await asyncio.open_connection(url.host, url.port)
        try:
            writer.write(
                f"GET /v1/workflows/events/stream?start_seq={self.start_after + 1} HTTP/1.1\r\n"
                f"Host: {url.host}\r\nAccept: text/event-stream\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"the stream was refused: {head[:200]!r}")
            self.opened.release()
            # Every client reads every frame; one in MEASURED_EVERY parses and times them,
            # the others only take the bytes (the bench's own parsing must not be what it
            # measures).
            if index % MEASURED_EVERY:
                while await reader.read(1 << 16):
                    pass
                return
            # Chunked transfer: each chunk holds whole frames, so a frame's data line is
            # never split by a chunk's size line.
            while line := await reader.readline():
                if line.startswith(b"data: "):
                    self._timed(time.time_ns(), json.loads(line[6:])["data"], index)
        finally:
            writer.close()

    def _timed(self, arrived: int, event: dict[str, Any], index: int) -> None:
        with self.lock:
            self.delays.append((arrived - event["event_timestamp"]) / 1e6)
            if index == 0 and event["event_type"] == "WORKFLOW_EXECUTION_COMPLETED":
                self.completed.add(event["workflow_exec_id"])


def measure_streams(api_url: str, database_url: str, config: StreamBenchConfig) -> dict[str, Any]:
    """Twice: one client alone (the delay events themselves take to reach a stream),
    then `config.clients` at once (what that many cost, and whether they hold up other
    requests)."""
    alone = _round(api_url, database_url, 1, config)
    crowd = _round(api_url, database_url, config.clients, config)
    return {
        "clients": config.clients,
        "executions": config.executions,
        "frames_timed": crowd["frames_timed"],
        "event_to_frame": alone["event_to_frame"],
        "event_to_frame_with_all_clients": crowd["event_to_frame"],
        "other_requests_while_streaming": crowd["other_requests"],
    }


def _round(
    api_url: str, database_url: str, count: int, config: StreamBenchConfig
) -> dict[str, Any]:
    with psycopg.connect(database_url, autocommit=True) as pg:
        row = pg.execute("SELECT last_position FROM stream_state WHERE id = 1").fetchone()
    clients = _Clients(api_url, int(row[0]) if row else 0, count)
    clients.start(config.timeout)
    other: list[float] = []
    try:
        with httpx.Client(base_url=api_url, timeout=config.timeout) as http:
            started = []
            for _ in range(config.executions):
                reply = http.post("/v1/workflows/bench-one/execute", json={"input": None})
                reply.raise_for_status()
                started.append(reply.json()["execution_id"])
                for path in ("/healthz", "/v1/workflows"):
                    began = time.perf_counter()
                    http.get(path).raise_for_status()
                    other.append((time.perf_counter() - began) * 1000)
            wait_for(
                lambda: set(started) <= clients.completed,
                config.timeout,
                "every execution on the stream",
            )
    finally:
        clients.stop(config.timeout)
    return {
        "frames_timed": len(clients.delays),
        "event_to_frame": _percentiles(clients.delays),
        "other_requests": _percentiles(other),
    }


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(percentile(ordered, 0.5), 1),
        "p99_ms": round(percentile(ordered, 0.99), 1),
    }
