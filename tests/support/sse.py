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


class Follower:
    """A stream read in a thread, its events kept as they arrive (``collect``
    has them only at the end): ``wait_for`` blocks until one matches."""

    def __init__(self, url: str, headers: dict | None = None, timeout: float = 120.0) -> None:
        self.events: list[dict] = []
        self.opened = threading.Event()
        self._arrived = threading.Condition()
        self._closed = False
        self._response = None
        self.thread = threading.Thread(target=self._run, args=(url, headers or {}, timeout), daemon=True)
        self.thread.start()

    def _run(self, url: str, headers: dict, timeout: float) -> None:
        import httpx

        lines: list[str] = []
        try:
            with httpx.stream("GET", url, headers=headers, timeout=timeout) as response:
                self._response = response
                self.opened.set()
                for line in response.iter_lines():
                    lines.append(line)
                    if line == "":
                        with self._arrived:
                            self.events.extend(parse(lines))
                            lines = []
                            self._arrived.notify_all()
        except Exception:  # closed by close(), or the server ended it
            pass
        finally:
            self.opened.set()
            with self._arrived:
                self._closed = True
                self._arrived.notify_all()

    def wait_for(self, matches, timeout: float = 20.0, after: int = 0) -> dict | None:
        """The first event from index ``after`` on for which ``matches(event)`` holds, waiting up to ``timeout`` seconds."""
        import time

        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                found = next((event for event in self.events[after:] if matches(event)), None)
                left = deadline - time.monotonic()
                if found is not None or self._closed or left <= 0:
                    return found
                self._arrived.wait(left)

    def close(self) -> None:
        if self._response is not None:
            self._response.close()
        self.thread.join(timeout=10)
