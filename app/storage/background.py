"""A daemon thread a process starts on first use (a LISTEN connection's, say), and
stops with `close`."""

from __future__ import annotations

import threading


class BackgroundThread:
    def __init__(self, name: str) -> None:
        self._name = name
        # Guards the thread, and what subclasses share with it.
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    def close(self, timeout: float = 2.0) -> None:
        """Stop: `_run` sees `_closed` set and returns (within a second or so)."""
        self._closed.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=timeout)

    def _ensure_started(self) -> None:
        with self._lock:
            if self._closed.is_set():
                return
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def _run(self) -> None:
        raise NotImplementedError
