"""What a worker's main process does when an activity's pool process dies under it.

With `task_reject_on_worker_lost`, Celery delivers the message again; it cannot tell
the engine that the attempt it carried is over. The main process knows (it saw the
process exit, or stopped it itself on losing the broker), so it records the attempt
as lost (WorkerLost), and the attempt is retried by its policy at once instead of
after its start-to-close deadline. Should that write fail, the deadline still holds.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

from billiard.einfo import ExceptionWithTraceback  # type: ignore[attr-defined]  # (missing from the stubs)
from billiard.exceptions import WorkerLostError
from celery.worker.request import Request

from app.engine.activities.outcome import record_lost_attempt
from app.engine.activities.run import failed
from app.messaging.dispatcher import get_dispatcher
from app.storage.db import get_engine

log = logging.getLogger(__name__)


class ActivityRequest(Request):
    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> None:
        error = exc_info.exception
        if isinstance(error, ExceptionWithTraceback):
            error = error.exc
        if isinstance(error, WorkerLostError):
            self._report_lost(f"the process running the attempt exited ({error})")
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def cancel(self, pool: Any, signal: Any = None, emit_retry: bool = True) -> None:
        if self.time_start:
            self._report_lost("its worker stopped the attempt on losing the broker connection")
        super().cancel(pool, signal=signal, emit_retry=emit_retry)

    def _report_lost(self, message: str) -> None:
        run_id, seq = self.args[0], int(self.args[1])
        # Off the main process's event loop, which a database call must not block.
        threading.Thread(
            target=_record_lost,
            args=(run_id, seq, self.id, message),
            name="chainline-lost-attempt",
            daemon=True,
        ).start()


def _record_lost(run_id: str, seq: int, task_id: str, message: str) -> None:
    try:
        follow_up = record_lost_attempt(
            get_engine(),
            uuid.UUID(run_id),
            seq,
            task_id=task_id,
            outcome=failed("WorkerLost", message),
        )
        get_dispatcher().send([follow_up])
    except Exception:
        log.exception("could not record the lost attempt of run %s activity %s", run_id, seq)
