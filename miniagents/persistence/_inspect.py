"""``python -m miniagents.persistence inspect run.db``: print each run's call tree with message previews."""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Sequence

from miniagents.persistence._reader import Direction, StoredCall, StoreReader


def _preview(text: str, width: int) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= width else text[: max(width - 1, 1)] + "…")


def _short_class(path: str) -> str:
    return path.rpartition(":")[2]


def _kwargs(call: StoredCall) -> str:
    return ", ".join(f"{name}={value!r}" for name, value in call.kwargs.items())


def render(reader: StoreReader, *, run: str | None = None, width: int = 72, messages: int = 3) -> list[str]:
    """Return the lines ``inspect`` prints.

    Runs oldest first (only those whose id starts with *run*); each call with up to *messages* input (``>``)
    and reply (``<``) previews of *width* characters; children indented under their parent.
    """
    lines: list[str] = [f"{reader.path}: {reader.message_count()} messages"]
    for stored_run in reader.runs():
        if run is not None and not stored_run.run_id.startswith(run):
            continue
        started = datetime.datetime.fromtimestamp(stored_run.started_at).isoformat(
            sep=" ", timespec="seconds"
        )
        lines.append(f"run {stored_run.run_id}  {started}  {stored_run.calls} calls")
        calls = reader.calls(run_id=stored_run.run_id)
        ids = {call.call_id for call in calls}
        children: dict[int | None, list[StoredCall]] = {}
        for call in calls:
            parent = call.parent_call_id if call.parent_call_id in ids else None
            children.setdefault(parent, []).append(call)

        for root in children.get(None, []):
            _show(reader, root, 0, ids, children, width, messages, lines)
    return lines


def _show(
    reader: StoreReader,
    call: StoredCall,
    depth: int,
    ids: set[int],
    children: dict[int | None, list[StoredCall]],
    width: int,
    messages: int,
    lines: list[str],
) -> None:
    pad = "  " * depth
    took = f"{(call.finished_at - call.started_at) * 1000:.1f} ms"
    orphan = (
        f" (parent #{call.parent_call_id} not stored)"
        if call.parent_call_id is not None and call.parent_call_id not in ids
        else ""
    )
    lines.append(f"{pad}  #{call.call_id} {call.agent_alias}({_kwargs(call)}) {call.outcome} {took}{orphan}")
    if call.error:
        lines.append(f"{pad}     ! {call.error}")
    _messages(reader, call, "input", ">", pad, width, messages, lines)
    _messages(reader, call, "reply", "<", pad, width, messages, lines)
    for child in children.get(call.call_id, []):
        _show(reader, child, depth + 1, ids, children, width, messages, lines)


def _messages(
    reader: StoreReader,
    call: StoredCall,
    direction: Direction,
    mark: str,
    pad: str,
    width: int,
    limit: int,
    lines: list[str],
) -> None:
    count, rows = reader.call_message_rows(call, direction, limit)
    for key, cls, content in rows:
        lines.append(f"{pad}     {mark} {_short_class(cls)} {key[:8]} {_preview(content, width)}")
    if count > len(rows):
        lines.append(f"{pad}     {mark} ... {count - len(rows)} more")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m miniagents.persistence``."""
    parser = argparse.ArgumentParser(prog="python -m miniagents.persistence")
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="print the call tree of each run with message previews")
    inspect.add_argument("path", help="the store file (e.g. run.db)")
    inspect.add_argument("--run", help="only runs whose id starts with this")
    inspect.add_argument("--width", type=int, default=72, help="preview width in characters (default 72)")
    inspect.add_argument(
        "--messages", type=int, default=3, help="previews per call and direction (default 3)"
    )
    args = parser.parse_args(argv)
    try:
        with StoreReader(args.path) as reader:
            lines = render(reader, run=args.run, width=args.width, messages=args.messages)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
