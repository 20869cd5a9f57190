"""Helpers shared by every command: output for people (rich) or scripts (--json), errors, progress.

Light on purpose: imported while building `suite --help`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

DEBUG = os.environ.get("SUITE_DEBUG", "").lower() in {"1", "true", "yes"}


def set_debug(value: bool) -> None:
    global DEBUG
    DEBUG = value or DEBUG


def _default(obj: Any) -> Any:
    if isinstance(obj, datetime | date):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    return str(obj)


def to_jsonable(data: Any) -> Any:
    return json.loads(json.dumps(data, default=_default))


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, soft_wrap=True)


def emit(
    data: Any, *, as_json: bool = False, title: str | None = None, columns: list[str] | None = None
) -> None:
    """Print `data` as JSON (scripts) or a rich table / key-value list (people)."""
    data = to_jsonable(data)
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        return
    from rich.table import Table

    out = console()
    if isinstance(data, list):
        if not data:
            out.print(f"[dim]no {title or 'rows'}[/dim]")
            return
        if all(isinstance(row, Mapping) for row in data):
            cols = columns or list(dict.fromkeys(k for row in data for k in row))
            table = Table(title=title, show_lines=False)
            for col in cols:
                table.add_column(col)
            for row in data:
                table.add_row(*(_cell(row.get(c)) for c in cols))
            out.print(table)
            return
        for item in data:
            out.print(_cell(item))
        return
    if isinstance(data, Mapping):
        table = Table(title=title, show_header=False, box=None)
        table.add_column(style="bold")
        table.add_column()
        for key, value in data.items():
            table.add_row(str(key), _cell(value))
        out.print(table)
        return
    out.print(_cell(data))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def fail(message: str, code: int = 1) -> None:
    """Print one error line and exit."""
    import typer
    from rich.markup import escape

    console(stderr=True).print(f"[red]error:[/red] {escape(message)}", highlight=False, markup=True)
    raise typer.Exit(code)


def info(message: str) -> None:
    console(stderr=True).print(message, highlight=False)


@contextmanager
def progress(description: str, total: int | None = None, *, enabled: bool = True) -> Iterator[Any]:
    """A rich progress bar on stderr; yields a callback `advance(done, total=None, message=None)`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if not enabled:
        yield lambda *a, **k: None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console(stderr=True),
        transient=not sys.stderr.isatty(),
    )
    with bar:
        task = bar.add_task(description, total=total)

        def advance(done: int, total: int | None = None, message: str | None = None) -> None:
            kwargs: dict[str, Any] = {"completed": done}
            if total is not None:
                kwargs["total"] = total
            if message:
                kwargs["description"] = f"{description}: {message}"
            bar.update(task, **kwargs)

        yield advance


def iter_with_progress(items: Iterable[Any], description: str, total: int | None = None) -> Iterator[Any]:
    with progress(description, total) as advance:
        for i, item in enumerate(items, 1):
            yield item
            advance(i)
