"""One of two modules defining an activity named `send_report`."""

from __future__ import annotations

from app import workflows


@workflows.activity()
def send_report(recipient: str) -> str:
    return f"sent by first to {recipient}"
