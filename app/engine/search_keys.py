"""Changing an execution's search keys while it runs: from its workflow code (a command,
applied in the workflow task's transaction) or from one of its activities (at once)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import Engine

from app.model.search_keys import merged
from app.storage.executions import lock_search_keys, write_search_keys
from app.storage.transactions import Transaction, transaction


def apply_search_keys(
    tx: Transaction,
    execution_id: str,
    values: Mapping[str, str | None],
    deleted: Sequence[str],
) -> None:
    """Merge the change into what the execution holds (values checked already)."""
    current = lock_search_keys(tx, execution_id)
    if current is not None:
        write_search_keys(tx, execution_id, merged(current, values, deleted))


def upsert_search_keys(
    engine: Engine,
    execution_id: str,
    values: Mapping[str, str | None],
    deleted: Sequence[str],
) -> None:
    """`apply_search_keys` in a transaction of its own (an activity's call)."""
    with transaction(engine) as tx:
        apply_search_keys(tx, execution_id, values, deleted)
