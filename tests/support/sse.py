"""A small Server-Sent Events reader for tests and benchmarks."""

from __future__ import annotations

import json
import threading


def parse(lines) -> list[dict]:
    """Events (``event``, ``id``, ``data`` as JSON) from an iterable of text lines; comments are skipped."""
    events, current = [], {}
    for line in lines:
        if line == "":
            if "event" in current or "data" in current:
                events.append({"event": current.get("event", "message"), "id": current.get("id"),
                               "data": json.loads(current["data"]) if "data" in current else None})
            current = {}
        elif not line.startswith(":") and ":" in line:
            name, value = line.split(":", 1)
            current[name] = value[1:] if value.startswith(" ") else value
    return events


def collect(url: str, headers: dict | None = None, timeout: float = 60.0) -> tuple[threading.Thread, dict]:
    """Read a stream to its end in a thread; ``result["events"]`` when joined, ``result["opened"]`` set once connected."""
    import httpx

    result: dict = {"events": [], "opened": threading.Event(), "status": None}

    def run():
        try:
            with httpx.stream("GET", url, headers=headers or {}, timeout=timeout) as response:
                result["status"] = response.status_code
                result["content_type"] = response.headers.get("content-type")
                result["opened"].set()
                lines = []
                for line in response.iter_lines():
                    lines.append(line)
                result["events"] = parse(lines + [""])
        finally:
            result["opened"].set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result
