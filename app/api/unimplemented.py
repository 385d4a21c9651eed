"""The `mistralai` SDK's workflow routes that Chainline does not implement yet: each
answers 501 naming itself, instead of being caught by /v1/workflows/{workflow_name}
as a workflow named `runs` or `schedules` that does not exist."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.responses import errors
from app.errors import NotImplementedYet

# (method, path) of every such route, as the SDK 3.7.0 calls them.
ROUTES = [
    ("PUT", "/v1/workflows/archive"),
    ("PUT", "/v1/workflows/unarchive"),
    ("GET", "/v1/workflows/deployments"),
    ("POST", "/v1/workflows/deployments"),
    ("GET", "/v1/workflows/deployments/{name}"),
    ("PATCH", "/v1/workflows/deployments/{name}"),
    ("DELETE", "/v1/workflows/deployments/{name}"),
    ("GET", "/v1/workflows/deployments/{name}/archive"),
    ("GET", "/v1/workflows/deployments/{name}/logs"),
    ("GET", "/v1/workflows/deployments/{name}/logs/stream"),
    ("POST", "/v1/workflows/deployments/{name}/restart"),
    ("POST", "/v1/workflows/deployments/{name}/start"),
    ("POST", "/v1/workflows/deployments/{name}/stop"),
    ("GET", "/v1/workflows/deployments/{name}/workers"),
    ("POST", "/v1/workflows/deployments/{deployment_id}/unharden"),
    ("GET", "/v1/workflows/executions"),
    ("GET", "/v1/workflows/executions/{execution_id}/logs"),
    ("GET", "/v1/workflows/executions/{execution_id}/logs/stream"),
    ("GET", "/v1/workflows/executions/{execution_id}/trace/events"),
    ("GET", "/v1/workflows/executions/{execution_id}/trace/info"),
    ("GET", "/v1/workflows/executions/{execution_id}/trace/otel"),
    ("GET", "/v1/workflows/executions/{execution_id}/trace/summary"),
    ("GET", "/v1/workflows/registrations"),
    ("GET", "/v1/workflows/registrations/{workflow_registration_id}"),
    ("POST", "/v1/workflows/registrations/{workflow_registration_id}/execute"),
    ("PUT", "/v1/workflows/{workflow_identifier}"),
    ("PUT", "/v1/workflows/{workflow_identifier}/archive"),
    ("PUT", "/v1/workflows/{workflow_identifier}/unarchive"),
    ("POST", "/v1/workflows/{workflow_identifier}/tags"),
    ("GET", "/v1/workflows/{workflow_name}/metrics"),
]


async def not_implemented(request: Request) -> None:
    route = request.scope["route"].path
    raise NotImplementedYet(f"{request.method} {route} is not implemented by Chainline yet")


def router() -> APIRouter:
    """A router with every route of ROUTES, literal paths before parameterised ones."""
    routes = APIRouter(tags=["not implemented yet"])
    for method, path in sorted(ROUTES, key=lambda route: "{" in route[1]):
        routes.add_api_route(
            path,
            not_implemented,
            methods=[method],
            response_model=None,
            responses=errors(501),
            summary=f"{method} {path} (not implemented yet)",
        )
    return routes
