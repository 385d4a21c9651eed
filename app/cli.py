"""The `chainline` command: talk to the HTTP API, and start Chainline's processes."""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click
import httpx

from app.processes import (
    make_current_folder_importable,
    run_together,
    with_current_folder_importable,
    with_scripts_on_path,
)

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
CELERY_APP = "workers.celery_app"


class ApiError(click.ClickException):
    """An error answer or an unreachable API, shown as one line."""

    exit_code = 1

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class Api:
    def __init__(self, base_url: str, api_key: str | None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self.client = httpx.Client(base_url=self.base_url, headers=headers, timeout=30)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            reply = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(f"cannot reach the Chainline API at {self.base_url}: {exc}") from exc
        if reply.status_code >= 400:
            raise ApiError(_describe_error(reply), reply.status_code)
        if reply.status_code == 204:
            return None
        return reply.json()


def _describe_error(reply: httpx.Response) -> str:
    try:
        body = reply.json()
    except ValueError:
        return f"HTTP {reply.status_code}: {reply.text[:200]}"
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list):
        detail = "; ".join(
            f"{'.'.join(str(p) for p in item.get('loc', []))}: {item.get('msg')}" for item in detail
        )
    code = f" {body['code']}" if isinstance(body, dict) and body.get("code") else ""
    return f"HTTP {reply.status_code}{code}: {detail}"


def _emit(data: Any, as_json: bool, human: str) -> None:
    click.echo(json.dumps(data, indent=2) if as_json else human)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def _connection_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """`--base-url` and `--api-key`, accepted before the subcommand and after it."""

    def remember(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        # Given after the subcommand, it wins over the group's (and its environment's).
        if value is not None:
            ctx.ensure_object(dict)[str(param.name)] = value

    command = click.option(
        "--api-key",
        default=None,
        expose_value=False,
        callback=remember,
        help="Bearer token (env CHAINLINE_API_KEY).",
    )(command)
    return click.option(
        "--base-url",
        default=None,
        expose_value=False,
        callback=remember,
        help=f"The API to talk to (env CHAINLINE_BASE_URL, default {DEFAULT_BASE_URL}).",
    )(command)


@click.group()
@click.option(
    "--base-url",
    envvar="CHAINLINE_BASE_URL",
    default=DEFAULT_BASE_URL,
    show_default=True,
    help="The API to talk to (env CHAINLINE_BASE_URL).",
)
@click.option("--api-key", envvar="CHAINLINE_API_KEY", default=None, help="Bearer token.")
@click.pass_context
def main(ctx: click.Context, base_url: str, api_key: str | None) -> None:
    """Chainline: durable workflow executions on Celery and Postgres."""
    ctx.obj = {"base_url": base_url, "api_key": api_key}


def _api(ctx: click.Context) -> Api:
    return Api(ctx.obj["base_url"], ctx.obj["api_key"])


@main.command()
@json_option
@_connection_options
@click.pass_context
def workflows(ctx: click.Context, as_json: bool) -> None:
    """List the registered workflows."""
    listing = _api(ctx).call("GET", "/v1/workflows", params={"limit": 1000})
    rows = [f"{w['name']:<32} {w.get('description') or ''}" for w in listing["workflows"]]
    _emit(listing, as_json, "\n".join(rows) or "(no workflows registered)")


class InputError(click.ClickException):
    """`--input` cannot be used: one line, exit code 2 as for other usage errors."""

    exit_code = 2

    def format_message(self) -> str:
        return f"--input: {self.message}"


def _read_input(raw: str | None) -> Any:
    if raw is None:
        return None
    text = raw
    if raw.startswith("@"):
        try:
            text = Path(raw[1:]).read_text()
        except OSError as exc:
            raise InputError(f"cannot read {raw[1:]}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise InputError(f"cannot read {raw[1:]}: not UTF-8 text") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON: {exc}") from None


def _describe_execution(record: dict[str, Any]) -> str:
    lines = [
        f"execution  {record['execution_id']}",
        f"workflow   {record['workflow_name']}",
        f"status     {record['status']}",
        f"started    {record['start_time']}",
        f"ended      {record['end_time'] or '-'}",
    ]
    if record.get("result") is not None:
        lines.append(f"result     {json.dumps(record['result'])}")
    if record.get("error"):
        lines.append(f"error      {record['error'].get('type')}: {record['error'].get('message')}")
    return "\n".join(lines)


def _wait(api: Api, execution_id: str, timeout: float) -> dict[str, Any]:
    spinner = itertools.cycle("|/-\\")
    show_progress = sys.stderr.isatty()
    deadline = time.monotonic() + timeout
    while True:
        record: dict[str, Any] = api.call("GET", f"/v1/workflows/executions/{execution_id}")
        if record["end_time"] is not None:
            if show_progress:
                click.echo("\r" + " " * 60 + "\r", nl=False, err=True)
            return record
        if time.monotonic() > deadline:
            raise ApiError(f"execution {execution_id} still {record['status']} after {timeout}s")
        if show_progress:
            click.echo(f"\r{next(spinner)} {execution_id} {record['status']}", nl=False, err=True)
        time.sleep(0.1)


@main.command()
@click.argument("workflow")
@click.option("--input", "raw_input", help="JSON input, or @file to read it from a file.")
@click.option("--id", "execution_id", help="Execution id (default: generated).")
@click.option("--wait", is_flag=True, help="Wait for the execution to finish.")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds --wait waits.")
@json_option
@_connection_options
@click.pass_context
def run(
    ctx: click.Context,
    workflow: str,
    raw_input: str | None,
    execution_id: str | None,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Start an execution of WORKFLOW."""
    api = _api(ctx)
    body: dict[str, Any] = {"input": _read_input(raw_input)}
    if execution_id:
        body["execution_id"] = execution_id
    record = api.call("POST", f"/v1/workflows/{workflow}/execute", json=body)
    if wait:
        # On stderr, so stdout stays the result alone; a Ctrl-C'd wait still says which
        # execution goes on.
        click.echo(f"started {record['execution_id']}", err=True)
        record = _wait(api, record["execution_id"], timeout)
        human = (
            json.dumps(record["result"])
            if record["status"] == "COMPLETED"
            else _describe_execution(record)
        )
        _emit(record, as_json, human)
        if record["status"] != "COMPLETED":
            sys.exit(1)
        return
    _emit(record, as_json, f"started {record['execution_id']} ({record['status']})")


def _read_execution_or_run(api: Api, some_id: str, suffix: str = "") -> Any:
    """GET an execution's `suffix`, or, when no execution has that id and it is a UUID,
    the run's (a reset adds runs under one execution id)."""
    try:
        return api.call("GET", f"/v1/workflows/executions/{some_id}{suffix}")
    except ApiError as missing:
        if missing.status_code != 404 or not _is_uuid(some_id):
            raise
    try:
        return api.call("GET", f"/v1/workflows/runs/{some_id}{suffix}")
    except ApiError as also_missing:
        if also_missing.status_code == 404:
            raise ApiError(f"no execution or run has the id {some_id}", 404) from None
        raise


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


@main.command()
@click.argument("execution_or_run_id")
@json_option
@_connection_options
@click.pass_context
def get(ctx: click.Context, execution_or_run_id: str, as_json: bool) -> None:
    """Show one execution (as its latest run shows it), or one run of it by run id."""
    record = _read_execution_or_run(_api(ctx), execution_or_run_id)
    _emit(record, as_json, _describe_execution(record))


@main.command()
@click.argument("execution_or_run_id")
@json_option
@_connection_options
@click.pass_context
def history(ctx: click.Context, execution_or_run_id: str, as_json: bool) -> None:
    """Show the history of an execution's latest run, or of a run by its id, oldest
    event first."""
    events = _read_execution_or_run(_api(ctx), execution_or_run_id, "/history")
    rows = []
    for event in events["events"]:
        attributes = event["attributes"]
        detail = attributes.get("activity_name") or attributes.get("to_status") or ""
        if "attempt" in attributes and attributes.get("activity_name"):
            detail += f" (attempt {attributes['attempt']})"
        if "failure" in attributes:
            detail += f" {attributes['failure'].get('type')}: {attributes['failure']['message']}"
        at = _event_time(event["event_timestamp"])
        rows.append(f"{at}  {event['event_type']:<30} {detail}".rstrip())
    _emit(events, as_json, "\n".join(rows))


@main.command()
@click.argument("execution_id")
@click.option("--json", "as_json", is_flag=True, help="Print each event as a JSON line.")
@_connection_options
@click.pass_context
def watch(ctx: click.Context, execution_id: str, as_json: bool) -> None:
    """Follow an execution live, from its stream: each activity and task as it starts,
    progresses and ends, then the result. Exits 1 unless it completed."""
    api = _api(ctx)
    record = api.call("GET", f"/v1/workflows/executions/{execution_id}")
    if not as_json:
        click.echo(f"{record['workflow_name']} {execution_id}: {record['status']}")
    # A stream goes quiet between events (keep-alives only): no read timeout.
    api.client.timeout = httpx.Timeout(30, read=None)
    try:
        with api.client.stream("GET", f"/v1/workflows/executions/{execution_id}/stream") as reply:
            if reply.status_code >= 400:
                reply.read()
                raise ApiError(_describe_error(reply), reply.status_code)
            for line in reply.iter_lines():
                if not line.startswith("data: "):
                    continue
                event = json.loads(line[6:])["data"]
                click.echo(json.dumps(event) if as_json else _watch_line(event))
    except httpx.HTTPError as exc:
        raise ApiError(f"the stream of {execution_id} broke off: {exc}") from exc
    record = api.call("GET", f"/v1/workflows/executions/{execution_id}")
    if not as_json:
        click.echo(_describe_execution(record))
    if record["status"] != "COMPLETED":
        sys.exit(1)


def _watch_line(event: dict[str, Any]) -> str:
    """One event as a line: its time, what it is about, and how it stands."""
    a = event["attributes"]
    kind = event["event_type"]
    at = _event_time(event["event_timestamp"])
    if kind.startswith("ACTIVITY_TASK_"):
        what = f"activity {a.get('activity_name')} (attempt {a.get('attempt', 1)})"
        state = kind.removeprefix("ACTIVITY_TASK_").lower()
        if "failure" in a:
            state += f": {a['failure'].get('type')}: {a['failure'].get('message')}"
    elif kind.startswith("CUSTOM_TASK_"):
        what = f"task {a.get('custom_task_type')} {a.get('custom_task_id', '')[:8]}"
        state = kind.removeprefix("CUSTOM_TASK_").lower().replace("_", " ")
        payload = a.get("payload") or {}
        if payload.get("type") == "json_patch":
            state += " " + ", ".join(
                f"{op['path'].lstrip('/')}={json.dumps(op.get('value'))}" for op in payload["value"]
            )
        elif payload.get("value") is not None:
            state += " " + json.dumps(payload["value"])
    else:
        what = "execution"
        state = kind.removeprefix("WORKFLOW_").lower().replace("_", " ")
    return f"{at}  {what:<40} {state}"


def _control_command(verb: str, doc: str, done: str) -> None:
    """`chainline <verb> ID`: POST the execution's /<verb>; prints `done` with the id."""

    @main.command(verb, help=doc)
    @click.argument("execution_id")
    @json_option
    @_connection_options
    @click.pass_context
    def control(ctx: click.Context, execution_id: str, as_json: bool) -> None:
        _api(ctx).call("POST", f"/v1/workflows/executions/{execution_id}/{verb}")
        _emit({"execution_id": execution_id}, as_json, f"{done} {execution_id}")


_control_command(
    "cancel",
    "Ask an execution to stop: its code sees a cancellation and may clean up.",
    "cancel requested for",
)
_control_command(
    "terminate", "End an execution TERMINATED now, stopping its running activities.", "terminated"
)


@main.command()
@click.argument("execution_id")
@click.option(
    "--event",
    "event_id",
    type=int,
    required=True,
    help="A WORKFLOW_TASK_COMPLETED event id of its current run.",
)
@click.option("--reason", help="Why, recorded with the reset.")
@click.option("--exclude-signals", is_flag=True, help="Drop the signals received after the event.")
@click.option("--exclude-updates", is_flag=True, help="Drop the updates received after the event.")
@json_option
@_connection_options
@click.pass_context
def reset(
    ctx: click.Context,
    execution_id: str,
    event_id: int,
    reason: str | None,
    exclude_signals: bool,
    exclude_updates: bool,
    as_json: bool,
) -> None:
    """Start a new run of an execution from its history up to EVENT, on the code
    deployed now; its current run, if open, ends TERMINATED."""
    api = _api(ctx)
    body: dict[str, Any] = {
        "event_id": event_id,
        "exclude_signals": exclude_signals,
        "exclude_updates": exclude_updates,
    }
    if reason:
        body["reason"] = reason
    api.call("POST", f"/v1/workflows/executions/{execution_id}/reset", json=body)
    record = api.call("GET", f"/v1/workflows/executions/{execution_id}")
    _emit(record, as_json, f"reset {execution_id}: new run {record['run_id']} ({record['status']})")


@main.command()
@click.option("--workflow", "workflow_identifier", help="Only this workflow's runs.")
@click.option("--root", "root_execution_id", help="Only this execution's tree of runs.")
@click.option("--status", "statuses", multiple=True, help="Only runs in this status (repeatable).")
@click.option("--search", help="A prefix of the workflow's name or the execution's id.")
@click.option("--since", "start_time_after", help="Only runs started at or after (ISO 8601).")
@click.option("--until", "start_time_before", help="Only runs started at or before (ISO 8601).")
@click.option("--oldest-first", is_flag=True, help="Oldest first (default: newest first).")
@click.option("--limit", default=50, show_default=True, help="How many runs to show.")
@json_option
@_connection_options
@click.pass_context
def runs(
    ctx: click.Context,
    workflow_identifier: str | None,
    root_execution_id: str | None,
    statuses: tuple[str, ...],
    search: str | None,
    start_time_after: str | None,
    start_time_before: str | None,
    oldest_first: bool,
    limit: int,
    as_json: bool,
) -> None:
    """List runs, newest first: every run of every execution (a reset adds one)."""
    api = _api(ctx)
    params: dict[str, Any] = {
        k: v
        for k, v in {
            "workflow_identifier": workflow_identifier,
            "root_execution_id": root_execution_id,
            "search": search,
            "start_time_after": start_time_after,
            "start_time_before": start_time_before,
        }.items()
        if v
    }
    params["status"] = list(statuses)
    params["order"] = "asc" if oldest_first else "desc"
    listed: list[dict[str, Any]] = []
    token = None
    while len(listed) < limit:
        page_params = {**params, "page_size": min(limit - len(listed), 1000)}
        if token:
            page_params["next_page_token"] = token
        page = api.call("GET", "/v1/workflows/runs", params=page_params)
        listed.extend(page["executions"])
        token = page["next_page_token"]
        if not token:
            break
    rows = [
        f"{r['start_time']:<28} {r['status']:<20} {r['workflow_name']:<24} "
        f"{r['execution_id']}  run {r['run_id']}"
        for r in listed
    ]
    _emit({"executions": listed}, as_json, "\n".join(rows) or "(no runs)")


def _handler_input(raw: str | None) -> Any:
    value = _read_input(raw)
    if value is not None and not isinstance(value, dict):
        raise InputError("a handler's input is a JSON object of its parameters")
    return value


def _handler_command(
    command_name: str, path: str, doc: str, human: Callable[[str, str, Any], str]
) -> None:
    """`chainline <command_name> ID NAME [--input]`: POST NAME's input to the execution's
    `path` (signals, queries, updates); prints `human(id, name, reply)` or the JSON."""

    @main.command(command_name, help=doc)
    @click.argument("execution_id")
    @click.argument("name")
    @click.option("--input", "raw_input", help="JSON object of the handler's parameters, or @file.")
    @json_option
    @_connection_options
    @click.pass_context
    def invoke(
        ctx: click.Context, execution_id: str, name: str, raw_input: str | None, as_json: bool
    ) -> None:
        body = {"name": name, "input": _handler_input(raw_input)}
        api = _api(ctx)
        # An update's caller waits (the API up to a minute) for the workflow to handle it.
        api.client.timeout = httpx.Timeout(90)
        reply = api.call("POST", f"/v1/workflows/executions/{execution_id}/{path}", json=body)
        _emit(reply, as_json, human(execution_id, name, reply))


_handler_command(
    "signal",
    "signals",
    "Send the signal NAME to an execution.",
    lambda execution_id, name, _: f"signal {name!r} sent to {execution_id}",
)
_handler_command(
    "query",
    "queries",
    "Ask an execution the query NAME; prints its answer.",
    lambda _, __, reply: json.dumps(reply["result"]),
)
_handler_command(
    "update",
    "updates",
    "Send the update NAME to an execution and wait for its result; prints it.",
    lambda _, __, reply: json.dumps(reply["result"]),
)


def _event_time(nanoseconds: int) -> str:
    moment = datetime.fromtimestamp(nanoseconds / 1e9, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# Schedules: `chainline schedules ...`, over /v1/workflows/schedules.

OVERLAP_POLICIES = {
    "skip": 1,
    "buffer-one": 2,
    "buffer-all": 3,
    "cancel-other": 4,
    "terminate-other": 5,
    "allow-all": 6,
}
_OVERLAP_NAMES = {number: name for name, number in OVERLAP_POLICIES.items()}
overlap_option = click.option(
    "--overlap",
    type=click.Choice(list(OVERLAP_POLICIES)),
    help="What a tick does while the schedule's last execution still runs.",
)


@main.group()
def schedules() -> None:
    """Start executions on a schedule: list, show, create, pause, resume, trigger, delete."""


def _describe_schedule(schedule: dict[str, Any]) -> str:
    times = [
        *(f"cron {c}" for c in schedule.get("cron_expressions") or []),
        *(
            f"every {i['every']}" + (f" (offset {i['offset']})" if i.get("offset") else "")
            for i in schedule.get("intervals") or []
        ),
        *(f"calendar {json.dumps(c)}" for c in schedule.get("calendars") or []),
    ]
    policy = schedule.get("policy") or {}
    remaining = schedule.get("remaining_executions")
    lines = [
        f"schedule   {schedule['schedule_id']}",
        f"workflow   {schedule['workflow_name']}",
        f"state      {'paused' if schedule['paused'] else 'active'}"
        + (f" ({schedule['note']})" if schedule.get("note") else ""),
        f"times      {'; '.join(times)}"
        + (f" in {schedule['time_zone_name']}" if schedule.get("time_zone_name") else ""),
        f"overlap    {_OVERLAP_NAMES.get(policy.get('overlap', 1), policy.get('overlap'))}",
        f"input      {json.dumps(schedule['input'])}",
    ]
    if remaining is not None:
        lines.append(f"remaining  {remaining} of {schedule.get('max_executions')}")
    if schedule.get("missed_catchup_window"):
        lines.append(f"missed     {schedule['missed_catchup_window']} (beyond the catch-up window)")
    lines += [f"next       {f['scheduled_at']}" for f in schedule.get("future_executions") or []]
    lines += [
        f"started    {r['scheduled_at']}  {r['execution_id']}"
        for r in schedule.get("recent_executions") or []
    ]
    return "\n".join(lines)


@schedules.command("list")
@click.option("--workflow", "workflow_name", help="Only this workflow's schedules.")
@click.option("--status", type=click.Choice(["active", "paused"]), help="Only these.")
@json_option
@_connection_options
@click.pass_context
def list_schedules(
    ctx: click.Context, workflow_name: str | None, status: str | None, as_json: bool
) -> None:
    """List schedules, by id."""
    params = {k: v for k, v in {"workflow_name": workflow_name, "status": status}.items() if v}
    listing = _api(ctx).call("GET", "/v1/workflows/schedules", params=params)
    rows = []
    for schedule in listing["schedules"]:
        upcoming = schedule.get("future_executions") or [{"scheduled_at": "-"}]
        state = "paused" if schedule["paused"] else "active"
        rows.append(
            f"{schedule['schedule_id']:<32} {schedule['workflow_name']:<24} {state:<7}"
            f" next {upcoming[0]['scheduled_at']}"
        )
    _emit(listing, as_json, "\n".join(rows) or "(no schedules)")


@schedules.command("show")
@click.argument("schedule_id")
@json_option
@_connection_options
@click.pass_context
def show_schedule(ctx: click.Context, schedule_id: str, as_json: bool) -> None:
    """Show a schedule, its next times and the executions it started last."""
    schedule = _api(ctx).call("GET", f"/v1/workflows/schedules/{schedule_id}")
    _emit(schedule, as_json, _describe_schedule(schedule))


@schedules.command("create")
@click.argument("workflow", required=False)
@click.option("--id", "schedule_id", help="Schedule id (default: generated).")
@click.option("--cron", "crons", multiple=True, help="A 5-field cron expression (repeatable).")
@click.option("--every", "intervals", multiple=True, help="An interval: 90, PT1H, 1h30m.")
@click.option("--time-zone", help="IANA time zone of the cron expressions (default UTC).")
@click.option("--input", "raw_input", help="The workflow's JSON input, or @file.")
@overlap_option
@click.option("--catchup-window", type=int, help="Seconds within which missed ticks still fire.")
@click.option("--pause-on-failure", is_flag=True, help="Pause when an execution fails.")
@click.option("--max-executions", type=int, help="Stop after this many executions.")
@click.option(
    "--file",
    "spec_file",
    type=click.Path(dir_okay=False),
    help="The request body as JSON ({workflow_identifier, schedule: {...}}); flags add to it.",
)
@json_option
@_connection_options
@click.pass_context
def create_schedule(
    ctx: click.Context,
    workflow: str | None,
    schedule_id: str | None,
    crons: tuple[str, ...],
    intervals: tuple[str, ...],
    time_zone: str | None,
    raw_input: str | None,
    overlap: str | None,
    catchup_window: int | None,
    pause_on_failure: bool,
    max_executions: int | None,
    spec_file: str | None,
    as_json: bool,
) -> None:
    """Schedule WORKFLOW, from flags or from a JSON file (--file)."""
    body: dict[str, Any] = _read_input(f"@{spec_file}") if spec_file else {}
    if not isinstance(body, dict) or not isinstance(body.setdefault("schedule", {}), dict):
        raise InputError("--file holds a JSON object with a `schedule` object")
    schedule = body["schedule"]
    if workflow:
        body["workflow_identifier"] = workflow
    if schedule_id:
        body["schedule_id"] = schedule_id
    if raw_input is not None or "input" not in schedule:
        schedule["input"] = _read_input(raw_input)
    if crons:
        schedule["cron_expressions"] = [*schedule.get("cron_expressions", []), *crons]
    if intervals:
        schedule["intervals"] = [*schedule.get("intervals", []), *({"every": e} for e in intervals)]
    if time_zone:
        schedule["time_zone_name"] = time_zone
    if max_executions is not None:
        schedule["max_executions"] = max_executions
    policy = schedule.setdefault("policy", {})
    if overlap:
        policy["overlap"] = OVERLAP_POLICIES[overlap]
    if catchup_window is not None:
        policy["catchup_window_seconds"] = catchup_window
    if pause_on_failure:
        policy["pause_on_failure"] = True
    created = _api(ctx).call("POST", "/v1/workflows/schedules", json=body)
    _emit(created, as_json, f"scheduled {created['schedule_id']}")


def _schedule_action(verb: str, doc: str, done: str, *options: Any) -> None:
    """`chainline schedules <verb> ID [options]`: POST the schedule's /<verb> with the
    options given as its body; prints `done` with the id."""

    def action(ctx: click.Context, schedule_id: str, as_json: bool, **given: Any) -> None:
        body = {name: value for name, value in given.items() if value is not None}
        if "overlap" in body:
            body["overlap"] = OVERLAP_POLICIES[body["overlap"]]
        _api(ctx).call("POST", f"/v1/workflows/schedules/{schedule_id}/{verb}", json=body)
        _emit({"schedule_id": schedule_id}, as_json, f"{done} {schedule_id}")

    for option in options:
        action = option(action)
    schedules.command(verb, help=doc)(
        click.argument("schedule_id")(json_option(_connection_options(click.pass_context(action))))
    )


note_option = click.option("--note", help="Why, kept with the schedule.")
_schedule_action(
    "pause", "Pause a schedule: it starts nothing until resumed.", "paused", note_option
)
_schedule_action(
    "resume",
    "Resume a schedule from its next time (missed ones do not fire).",
    "resumed",
    note_option,
)
_schedule_action("trigger", "Start one execution of a schedule now.", "triggered", overlap_option)


@schedules.command("delete")
@click.argument("schedule_id")
@json_option
@_connection_options
@click.pass_context
def delete_schedule(ctx: click.Context, schedule_id: str, as_json: bool) -> None:
    """Delete a schedule (the executions it started go on)."""
    _api(ctx).call("DELETE", f"/v1/workflows/schedules/{schedule_id}")
    _emit({"schedule_id": schedule_id}, as_json, f"deleted {schedule_id}")


# Process commands: the Procfile runs these, so every deploy starts processes one way.


def _exec(argv: list[str], env: dict[str, str] | None = None) -> NoReturn:
    env = with_scripts_on_path(env if env is not None else os.environ)
    os.execvpe(argv[0], argv, with_current_folder_importable(env))


def _check_workflows(modules: str | None = None) -> None:
    """Import every CHAINLINE_WORKFLOWS module before starting anything, so a typo is one
    line here instead of a traceback in each process."""
    from app.settings import Settings, get_settings
    from app.workflows.registry import WorkflowModuleError, load_workflow_modules

    make_current_folder_importable()
    settings = get_settings() if modules is None else Settings(workflows=modules)
    try:
        load_workflow_modules(settings.workflow_modules)
    except WorkflowModuleError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
def migrate() -> None:
    """Apply the database migrations (the `release` process)."""
    from app.storage.migrate import upgrade

    upgrade()
    click.echo("database schema is at head")


@main.command()
@click.option("--host", envvar="CHAINLINE_API_HOST", default="127.0.0.1", show_default=True)
@click.option("--port", envvar="PORT", default=8000, show_default=True, type=int)
def api(host: str, port: int) -> None:
    """Serve the HTTP API."""
    import uvicorn

    _check_workflows()

    uvicorn.run("app.api.main:app", host=host, port=port, log_level="info")


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(celery_args: tuple[str, ...]) -> None:
    """Run a Celery worker (extra arguments go to `celery worker`), and beside it the
    workflow lane: a one-process worker for workflow tasks alone, so that a signal, a
    cancel or a timer is handled while every pool process runs an activity."""
    from app.settings import get_settings

    _check_workflows()
    command = ["celery", "-A", CELERY_APP, "worker", "--loglevel=INFO", *celery_args]
    settings = get_settings()
    if not settings.workflow_lane or _names_queues(celery_args):
        _exec(command)
    lane = [
        *command,
        f"--queues={settings.workflow_task_queue}",
        "--pool=solo",
        "--concurrency=1",
        f"--hostname={_lane_name(celery_args)}",
    ]
    env = with_current_folder_importable(with_scripts_on_path(os.environ))
    sys.exit(run_together([command, lane], env))


def _names_queues(celery_args: tuple[str, ...]) -> bool:
    """Whether the worker was told which queues to take (then it gets no lane)."""
    return any(a in ("-Q", "--queues") or a.startswith(("-Q", "--queues=")) for a in celery_args)


def _lane_name(celery_args: tuple[str, ...]) -> str:
    """The lane's node name, from its worker's (`-n name@host`): two workers on one host
    get two lanes."""
    name = "celery@%h"
    for index, arg in enumerate(celery_args):
        if arg in ("-n", "--hostname") and index + 1 < len(celery_args):
            name = celery_args[index + 1]
        elif arg.startswith("--hostname="):
            name = arg.split("=", 1)[1]
        elif arg.startswith("-n") and len(arg) > 2:
            name = arg[2:]
    node, _, host = name.rpartition("@") if "@" in name else (name, "@", "%h")
    return f"{node}-workflow-lane@{host}"


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def beat(celery_args: tuple[str, ...]) -> None:
    """Run Celery beat: the sweeper, timeouts, and (later) schedules."""
    _check_workflows()
    _exec(["celery", "-A", CELERY_APP, "beat", "--loglevel=INFO", *celery_args])


@main.command()
def flower() -> None:
    """Run Flower behind basic auth (CHAINLINE_FLOWER_BASIC_AUTH=user:password)."""
    from app.settings import get_settings

    settings = get_settings()
    if not settings.flower_basic_auth or ":" not in settings.flower_basic_auth:
        raise click.ClickException(
            "refusing to run Flower without credentials: "
            "set CHAINLINE_FLOWER_BASIC_AUTH=user:password"
        )
    _check_workflows()
    # Through the environment, so the password does not show in `ps`.
    env = {**os.environ, "FLOWER_BASIC_AUTH": settings.flower_basic_auth}
    _exec(
        [
            "celery",
            "-A",
            CELERY_APP,
            "flower",
            f"--port={settings.flower_port}",
            f"--address={settings.flower_address}",
        ],
        env,
    )


@main.command()
@click.option(
    "--data-dir",
    envvar="CHAINLINE_DATA_DIR",
    default=".chainline",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the embedded Postgres and Redis keep their data.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="API listen address.")
@click.option("--port", default=8000, show_default=True, help="API port.")
@click.option("--flower-port", default=5555, show_default=True)
def dev(data_dir: Path, host: str, port: int, flower_port: int) -> None:
    """Run everything: api, worker, beat and flower, on embedded Postgres and Redis.

    Set CHAINLINE_DATABASE_URL / CHAINLINE_BROKER_URL to use your own servers instead.
    """
    from app.devtools.devstack import DevStack, DevStackError, chosen_workflows

    _check_workflows(chosen_workflows(os.environ))
    try:
        stack = DevStack(data_dir=data_dir, host=host, port=port, flower_port=flower_port)
        sys.exit(stack.run())
    except DevStackError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.option("-n", "--executions", default=50, show_default=True, help="N executions per round.")
@click.option("-s", "--steps", default=5, show_default=True, help="S activities per execution.")
@click.option("-m", "--latency-samples", default=50, show_default=True, help="M latency runs.")
@click.option("-k", "--api-clients", default=8, show_default=True, help="K concurrent clients.")
@click.option("--rounds", default=5, show_default=True)
@click.option("--warmup-rounds", default=1, show_default=True)
@click.option("--concurrency", default=2, show_default=True, help="Worker processes.")
@click.option("--pool", default="prefork", show_default=True, help="Celery worker pool.")
@click.option("--preload-events", default=0, help="Fill the history with this many events first.")
@click.option(
    "--interaction-samples",
    default=30,
    show_default=True,
    help="Signals, queries, updates, cancels and terminates measured, each.",
)
@click.option(
    "--sleepers", default=1000, show_default=True, help="Executions whose timers fall due at once."
)
@click.option(
    "--schedules",
    default=1000,
    show_default=True,
    help="Schedules due every minute at the same second (lateness, beat CPU).",
)
@click.option(
    "--schedule-window",
    default=60.0,
    show_default=True,
    help="Seconds over which beat's CPU is measured, the schedules' tick inside.",
)
@click.option(
    "--listing-runs",
    default=1_000_000,
    show_default=True,
    help="Runs written to time the runs API's filtered pages at that size.",
)
@click.option(
    "--stream-clients",
    default=200,
    show_default=True,
    help="Clients holding the event stream open on the one API process.",
)
@click.option(
    "--peer/--no-peer",
    default=True,
    show_default=True,
    help="Also run DBOS Transact's sequential workflow (needs the bench extra).",
)
@click.option(
    "--dbos-concurrency",
    default="1,2,4,8",
    show_default=True,
    help="DBOS worker concurrencies to try; its fastest runs in the rounds.",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
def bench(
    executions: int,
    steps: int,
    latency_samples: int,
    api_clients: int,
    rounds: int,
    warmup_rounds: int,
    concurrency: int,
    pool: str,
    preload_events: int,
    interaction_samples: int,
    sleepers: int,
    schedules: int,
    schedule_window: float,
    listing_runs: int,
    stream_clients: int,
    peer: bool,
    dbos_concurrency: str,
    json_path: Path | None,
) -> None:
    """Measure Chainline against raw Celery chains (and DBOS Transact) on this machine."""
    from app.devtools.bench import BenchConfig, format_report, run_benchmark, write_json

    # Stopped from outside (`timeout`, a CI job), still stop the processes and servers
    # the bench started: SystemExit unwinds through their cleanup.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    config = BenchConfig(
        executions=executions,
        steps=steps,
        latency_samples=latency_samples,
        api_clients=api_clients,
        api_requests_per_client=max(1, latency_samples // max(1, api_clients)),
        rounds=rounds,
        warmup_rounds=warmup_rounds,
        concurrency=concurrency,
        pool=pool,
        preload_events=preload_events,
        interaction_samples=interaction_samples,
        sleepers=sleepers,
        schedules=schedules,
        schedule_window=schedule_window,
        listing_runs=listing_runs,
        stream_clients=stream_clients,
        peer=peer,
        dbos_concurrency=tuple(int(level) for level in dbos_concurrency.split(",")),
    )
    report = run_benchmark(config, lambda line: click.echo(line, err=True))
    click.echo(format_report(report))
    if json_path is not None:
        write_json(report, json_path)
