"""Definitions: one per name, and Mistral's decorator signatures, keyword for keyword."""

from __future__ import annotations

import inspect
import subprocess
import sys
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from app import workflows
from app.errors import InvalidDefinition
from app.model.retry import RetryPolicy
from app.workflows import compat
from app.workflows.compat import NoEffectWarning
from app.workflows.registry import (
    ActivityDefinition,
    Registry,
    WorkflowModuleError,
    load_workflow_modules,
)

# As mistralai-workflows 3.16.0 declares them (core/workflow.py, core/activity.py).
MISTRAL_DEFINE = [
    "name",
    "workflow_description",
    "schedules",
    "workflow_display_name",
    "is_technical",
    "enforce_determinism",
    "execution_timeout",
    "on_behalf_of",
    "search_keys",
]
MISTRAL_ACTIVITY = [
    "start_to_close_timeout",
    "retry_policy_max_attempts",
    "retry_policy_backoff_coefficient",
    "name",
    "sticky_to_worker",
    "rate_limit",
    "heartbeat_timeout",
]


def _positional(fn: Any) -> list[str]:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.POSITIONAL_ONLY)
    return [p.name for p in inspect.signature(fn).parameters.values() if p.kind in kinds]


def test_define_and_activity_take_mistral_s_keywords_in_mistral_s_order() -> None:
    assert _positional(workflows.workflow.define) == MISTRAL_DEFINE
    assert _positional(workflows.activity) == MISTRAL_ACTIVITY
    for fn in (workflows.workflow.define, workflows.activity):
        kinds = {p.kind for p in inspect.signature(fn).parameters.values()}
        assert inspect.Parameter.VAR_KEYWORD not in kinds  # unknown keywords raise


def test_an_unknown_keyword_raises() -> None:
    with pytest.raises(TypeError):
        workflows.workflow.define(name="unit-typo", execution_timout=timedelta(1))  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        workflows.activity(retries=3)  # type: ignore[call-arg]


def test_a_keyword_with_no_effect_warns_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compat, "_warned", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        workflows.activity(rate_limit=object())
        workflows.activity(rate_limit=object())
        workflows.workflow.define(name="unit-technical", is_technical=True)
    assert [w.category for w in caught] == [NoEffectWarning, NoEffectWarning]
    assert "rate_limit" in str(caught[0].message)
    assert "is_technical" in str(caught[1].message)
    # Each points at the user's line that gave the keyword, not into Chainline.
    assert [w.filename for w in caught] == [__file__, __file__]


def _function_of(module: str) -> Any:
    def send_report(recipient: str) -> str:
        return recipient

    send_report.__module__ = module
    return send_report


def _activity(fn: Any) -> ActivityDefinition:
    return ActivityDefinition("send_report", fn, timedelta(seconds=5), RetryPolicy())


def test_a_second_activity_of_one_name_raises_naming_both() -> None:
    registry = Registry()
    registry.add_activity(_activity(_function_of("billing.tasks")))
    with pytest.raises(InvalidDefinition) as raised:
        registry.add_activity(_activity(_function_of("reports.tasks")))
    assert "billing.tasks" in raised.value.detail and "reports.tasks" in raised.value.detail
    assert "'send_report'" in raised.value.detail


def test_the_same_definition_again_replaces_itself() -> None:
    registry = Registry()
    fn = _function_of("billing.tasks")
    registry.add_activity(_activity(fn))
    registry.add_activity(_activity(_function_of("billing.tasks")))  # its module imported anew
    assert registry.activities["send_report"].fn is not fn


def test_importing_two_modules_with_one_activity_name_fails() -> None:
    imported = subprocess.run(
        [sys.executable, "-c", "import tests.duplicates.first, tests.duplicates.second"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert imported.returncode != 0
    assert "tests.duplicates.first.send_report" in imported.stderr
    assert "tests.duplicates.second.send_report" in imported.stderr


def test_a_missing_workflow_module_is_one_line_saying_where_to_run_from() -> None:
    with pytest.raises(WorkflowModuleError) as raised:
        load_workflow_modules(["shop_flows_that_do_not_exist"])
    message = str(raised.value)
    assert message == (
        "cannot import workflow module 'shop_flows_that_do_not_exist' (CHAINLINE_WORKFLOWS): "
        "no module named 'shop_flows_that_do_not_exist' here; run from the folder that holds "
        "it, or add that folder to PYTHONPATH"
    )


def test_a_workflow_module_that_raises_names_the_error_and_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "shop_flows_broken.py").write_text("import json\n\nLIMIT = 1 / 0\n")
    (tmp_path / "shop_flows_needs.py").write_text("import a_library_nobody_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    with pytest.raises(WorkflowModuleError) as raised:
        load_workflow_modules(["shop_flows_broken"])
    assert str(raised.value) == (
        "cannot import workflow module 'shop_flows_broken' (CHAINLINE_WORKFLOWS): "
        f"ZeroDivisionError: division by zero at {tmp_path}/shop_flows_broken.py:3"
    )
    # A module it imports is missing, not the workflow module itself: no hint about folders.
    with pytest.raises(WorkflowModuleError) as raised:
        load_workflow_modules(["shop_flows_needs"])
    assert str(raised.value) == (
        "cannot import workflow module 'shop_flows_needs' (CHAINLINE_WORKFLOWS): "
        "ModuleNotFoundError: No module named 'a_library_nobody_installed' "
        f"at {tmp_path}/shop_flows_needs.py:1"
    )
