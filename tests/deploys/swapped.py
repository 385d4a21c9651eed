"""`deploy-check` with its two `tag` calls swapped: the same activities, other inputs."""

from __future__ import annotations

from app import workflows
from tests.deploys.activities import hold, tag


@workflows.workflow.define(name="deploy-check")
class DeployCheck:
    @workflows.workflow.entrypoint
    async def run(self, folder: str) -> list[str]:
        first: str = await tag("c")
        held: str = await hold(folder)
        last: str = await tag("a")
        return [first, held, last]
