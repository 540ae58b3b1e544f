"""examples/test_with_cassette.py passes offline: its committed cassette (recorded from the local model) replays."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_the_example_replays_its_committed_cassette_offline() -> None:
    cassette = EXAMPLES / "cassettes" / "test_with_cassette.test_blurb_pipeline.jsonl"
    before = cassette.read_bytes()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))}
    env["MINIAGENTS_CASSETTE_MODE"] = "replay"  # a missing or stale cassette fails instead of recording
    env["OPENAI_BASE_URL"] = "http://127.0.0.1:9/v1"  # nothing listens there: only the cassette can answer
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(EXAMPLES / "test_with_cassette.py"),
        ],
        cwd=EXAMPLES.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 passed" in result.stdout  # asyncio and trio
    assert cassette.read_bytes() == before
