"""examples/tracing.py prints the span tree of the run: agent calls nested as they ran, one span per model request."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tracing.py"
_LINE = re.compile(r"^(?P<indent> *)(?P<name>\S.*?)  \[[\d.]+ ms\](?P<details>.*)$")


def _run(*args: str, timeout: float) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    env = {k: v for k, v in env.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        cwd=EXAMPLE.parent,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr[-3000:]}"
    return result.stdout


def _tree(out: str) -> list[tuple[int, str, str]]:
    """(depth, span name, details) of every line of the printed tree."""
    rows = []
    for line in out.splitlines():
        match = _LINE.match(line)
        if match:
            rows.append((len(match["indent"]) // 2, match["name"], match["details"].strip()))
    return rows


def test_the_fake_run_prints_the_call_tree_with_request_spans_and_traceparents() -> None:
    out = _run("--fake", timeout=120)
    tree = _tree(out)
    assert [(depth, name) for depth, name, _ in tree[:2]] == [(0, "example run"), (1, "planner")]
    assert sorted((depth, name) for depth, name, _ in tree[2:]) == sorted(
        [
            (2, "writer"),
            (3, "chat fake-model"),
            (2, "writer"),
            (3, "chat fake-model"),
            (2, "editor"),
            (3, "chat fake-model"),
            (3, "word_count"),
            (3, "chat fake-model"),
        ]
    )
    # The editor's subtree: tool-calling turn, the tool's call, the final turn.
    start = next(i for i, (depth, name, _) in enumerate(tree) if (depth, name) == (2, "editor"))
    end = next((i for i in range(start + 1, len(tree)) if tree[i][0] <= 2), len(tree))
    assert [name for _, name, _ in tree[start + 1 : end]] == [
        "chat fake-model",
        "word_count",
        "chat fake-model",
    ]
    chats = [details for _, name, details in tree if name.startswith("chat")]
    assert all("provider=openai" in d and "in=11" in d for d in chats)
    assert sum("finish=tool_calls" in d for d in chats) == 1
    calls = [details for _, name, details in tree if not name.startswith("chat") and name != "example run"]
    assert all(d == "outcome=completed" for d in calls)
    assert "assistant> (calls word_count)" in out and "tool> '5 words'" in out
    assert "4 HTTP requests, each carrying its own span's traceparent: " + str(["chat fake-model"] * 4) in out


@pytest.mark.real_llm
@pytest.mark.skipif(
    os.environ.get("MINIAGENTS_SKIP_REAL_LLM") == "1",
    reason="MINIAGENTS_SKIP_REAL_LLM=1: the local model server is not started",
)
def test_the_local_model_run_prints_the_span_tree() -> None:
    tree = _tree(_run("--provider", "local", "--max-tokens", "8", timeout=300))
    assert [(depth, name) for depth, name, _ in tree[:2]] == [(0, "example run"), (1, "planner")]
    names = [(depth, name) for depth, name, _ in tree]
    assert names.count((2, "writer")) == 2 and names.count((2, "editor")) == 1
    # local_agent answers through openai_agent: every request span sits under that call.
    assert names.count((3, "openai_agent")) == 3
    assert names.count((4, "chat gemma3-270m")) == 3
    assert all("provider=openai" in d and "out=" in d for _, name, d in tree if name.startswith("chat"))
