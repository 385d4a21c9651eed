"""`deploy-check` with a bug: its last call passes `tag` an argument JSON cannot hold."""

from __future__ import annotations

from app import workflows
from tests.deploys.activities import hold, tag


@workflows.workflow.define(name="deploy-check")
class DeployCheck:
    @workflows.workflow.entrypoint
    async def run(self, folder: str) -> list[str]:
        first: str = await tag("a")
        held: str = await hold(folder)
        last: str = await tag(object())  # type: ignore[arg-type]
        return [first, held, last]
