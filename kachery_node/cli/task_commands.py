"""``kachery task``: request tasks and run task backends (mirrors kachery_node.apps.tasks)."""

from __future__ import annotations

import importlib
import json
import logging
import sys
from typing import Any

import click

from .output import CommandGroup, echo_json, json_option


@click.group(cls=CommandGroup)
def task() -> None:
    """Request tasks from a channel, or offer task functions to it."""


def _parse_arg(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"{text!r}: use --arg NAME=VALUE (VALUE is JSON, or else a string)")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key, value


@task.command("request")
@click.argument("function_id")
@click.option("--arg", "args", multiple=True, metavar="NAME=VALUE",
              help="A keyword argument; VALUE is parsed as JSON when it is JSON, else taken as text.")
@click.option("--kwargs", "kwargs_json", metavar="JSON", help="All keyword arguments as one JSON object.")
@click.option("--channel", help="Channel to ask (default: every joined channel).")
@click.option("--type", "function_type", type=click.Choice(["pure-calculation", "query", "action"]),
              default=None, help="How to treat the function (default: as its provider registered it).")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds to wait.")
@click.option("--request-id", help="Reuse a request ID to retry safely (actions run once per ID).")
@json_option
def request_cmd(function_id: str, args: tuple[str, ...], kwargs_json: str | None, channel: str | None,
                function_type: str | None, timeout: float, request_id: str | None, as_json: bool) -> None:
    """Request FUNCTION_ID(**args) and print its result (JSON); progress goes to stderr."""
    from ..apps.tasks import request_task

    kwargs: dict[str, Any] = {}
    if kwargs_json:
        try:
            kwargs = json.loads(kwargs_json)
        except ValueError as exc:
            raise click.BadParameter(f"--kwargs is not JSON: {exc}") from exc
        if not isinstance(kwargs, dict):
            raise click.BadParameter("--kwargs must be a JSON object")
    kwargs.update(_parse_arg(a) for a in args)
    show = sys.stderr.isatty() or not as_json

    def on_status(h) -> None:
        if show:
            extra = f" {json.dumps(h.progress)}" if h.progress is not None and h.status == "running" else ""
            click.echo(f"[{function_id}] {h.status}{extra}", err=True)

    handle = request_task(function_id, kwargs, channel=channel, timeout=timeout,
                          function_type=function_type, request_id=request_id)
    handle.on_status(on_status)
    result = handle.wait()
    if as_json:
        echo_json({"result": result, "provider": handle.provider, "from_cache": handle.from_cache,
                   "stale": handle.stale, "warnings": handle.warnings, "task_hash": handle.task_hash,
                   "request_id": handle.request_id})
        return
    for w in handle.warnings:
        click.echo(f"warning: {w}", err=True)
    if handle.from_cache:
        click.echo("(from the channel's cache" + (", stale: no provider answered" if handle.stale else "")
                   + ")", err=True)
    click.echo(json.dumps(result, ensure_ascii=False))


@task.command("backend")
@click.argument("functions", nargs=-1, required=True, metavar="MODULE:NAME...")
@click.option("--channel", "channels", multiple=True,
              help="Offer on this channel (repeatable; default: all joined).")
@click.option("--max-concurrency", type=int, default=4, show_default=True)
def backend_cmd(functions: tuple[str, ...], channels: tuple[str, ...], max_concurrency: int) -> None:
    """Offer task functions found at MODULE:NAME (a task function, or a list or dict of them)
    through this node's daemon until interrupted."""
    from ..apps.tasks import TaskFunction, run_task_backend

    found: list[TaskFunction] = []
    sys.path.insert(0, "")
    for spec in functions:
        module_name, sep, attr = spec.partition(":")
        if not sep:
            raise click.BadParameter(f"{spec!r}: use MODULE:NAME")
        try:
            obj = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise click.BadParameter(f"cannot load {spec}: {exc}") from exc
        items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list | tuple) else [obj]
        found.extend(items)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    ids = ", ".join(f.function_id for f in found if isinstance(f, TaskFunction))
    click.echo(f"offering {ids} on {', '.join(channels) or 'all joined channels'}", err=True)
    try:
        run_task_backend(channels=list(channels) or None, functions=found, max_concurrency=max_concurrency)
    except KeyboardInterrupt:
        pass
