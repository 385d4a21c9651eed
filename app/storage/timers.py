"""Durable timers: firing those that are due (beat's work, app/engine/timers.py)."""

from __future__ import annotations

import uuid

from app.storage.transactions import Transaction


def fire_due_timers(tx: Transaction, *, limit: int) -> list[uuid.UUID]:
    """Fire up to `limit` due timers; returns the runs whose workflow task they made due."""
    return [row[0] for row in tx.fetch_all("fire_due_timers", {"limit": limit})]
