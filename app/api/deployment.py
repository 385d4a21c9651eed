"""The workflows this API process serves: those of CHAINLINE_WORKFLOWS, imported once."""

from __future__ import annotations

from app.settings import get_settings
from app.workflows.registry import load_workflow_modules

registry = load_workflow_modules(get_settings().workflow_modules)
