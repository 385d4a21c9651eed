"""Activity retry policy: pure data plus the function that decides the next delay."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RetryPolicy:
    """When and how often a failed activity attempt is tried again.

    Defaults follow Mistral's worker SDK: 3 attempts, 1 s initial interval, doubling.
    """

    max_attempts: int = 3
    initial_interval: float = 1.0
    backoff_coefficient: float = 2.0
    maximum_interval: float | None = None
    non_retryable_error_types: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_interval < 0:
            raise ValueError("initial_interval must not be negative")
        if self.backoff_coefficient < 1:
            raise ValueError("backoff_coefficient must be at least 1")

    def next_delay(self, attempt: int, error_type: str) -> float | None:
        """Seconds to wait before the attempt after `attempt`, or None to give up."""
        if attempt >= self.max_attempts or error_type in self.non_retryable_error_types:
            return None
        delay = self.initial_interval * self.backoff_coefficient ** (attempt - 1)
        if self.maximum_interval is not None:
            delay = min(delay, self.maximum_interval)
        return delay

    def to_json(self) -> dict[str, Any]:
        return {
            "max_attempts": self.max_attempts,
            "initial_interval": self.initial_interval,
            "backoff_coefficient": self.backoff_coefficient,
            "maximum_interval": self.maximum_interval,
            "non_retryable_error_types": list(self.non_retryable_error_types),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RetryPolicy:
        return cls(
            max_attempts=int(data["max_attempts"]),
            initial_interval=float(data["initial_interval"]),
            backoff_coefficient=float(data["backoff_coefficient"]),
            maximum_interval=data.get("maximum_interval"),
            non_retryable_error_types=tuple(data.get("non_retryable_error_types", ())),
        )
