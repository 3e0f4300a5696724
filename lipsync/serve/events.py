"""A session's events for its viewers (server-sent events): speaking started/ended,
interrupted, errors, and a status line every second.

Each subscriber gets its own bounded queue on the event loop; a subscriber that
stops reading loses its oldest events rather than growing the server's memory.
An event is ``{"event": NAME, "time": seconds since the session opened, ...}``.
"""
import asyncio
import json
import time
from typing import Dict, List, Optional

QUEUED_EVENTS = 100              # per subscriber; older events are dropped past this
EVENT_NAMES = ("speaking_started", "speaking_ended", "interrupted", "status", "error", "recording", "closed")


class EventChannel:
    """Publish on the event loop; every subscriber's queue gets each event."""

    def __init__(self):
        self.opened_at = time.monotonic()
        self._subscribers: List[asyncio.Queue] = []
        self.history: List[Dict] = []            # speaking/interrupt events (not status), for GET /sessions/{id}

    def subscribe(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(maxsize=QUEUED_EVENTS)
        self._subscribers.append(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        if queue in self._subscribers:
            self._subscribers.remove(queue)

    def publish(self, name: str, **data) -> Dict:
        if name not in EVENT_NAMES:
            raise ValueError(f"unknown event {name!r}")
        event = {"event": name, "time": round(time.monotonic() - self.opened_at, 3), **data}
        if name != "status":
            self.history.append(event)
            del self.history[:-QUEUED_EVENTS]
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)
        return event

    def close(self) -> None:
        self.publish("closed")


def server_sent_event(event: Optional[Dict]) -> bytes:
    """One SSE message (``event: NAME`` + JSON data), or a keep-alive comment for None."""
    if event is None:
        return b": keep-alive\n\n"
    return f"event: {event['event']}\ndata: {json.dumps(event)}\n\n".encode()
