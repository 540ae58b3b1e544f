"""examples/rate_limits.py as a program: 200 tool calls, each an LLM request, through one context limiter.

It runs against the fake provider server (no model needed), with the limiter's minute 15 times faster (about 5 s
of real time).  The fake server enforces the same limits and refuses what exceeds them with 429: the run must end
with none refused, every tool call answered, and the server never seeing more than the limits.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "rate_limits.py"


def test_two_hundred_tool_calls_stay_within_the_limits_with_no_429() -> None:
    result = subprocess.run(
        # A generous latency allowance: on a loaded CI machine a granted request can take a while to reach the
        # server; the limiter's own exactness is what tests/core/test_limits_properties.py proves.
        [sys.executable, str(EXAMPLE), "--time-scale", "15", "--grace", "1.0", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr[-3000:]}"
    out = result.stdout
    assert "All 200 documents are summarised." in out
    assert "worker requests granted by the limiter: 200" in out
    assert "accepted by the provider: 200; refused with 429: 0 " in out
    seen = re.search(r"most concurrent requests the provider saw: (\d+) .* most in one window: (\d+)", out)
    assert seen is not None, out
    concurrent, in_window = int(seen[1]), int(seen[2])
    assert 1 <= concurrent <= 20 and in_window == 100
    # 200 requests at 100 per minute need a second window: at least one limiter minute passed.
    minutes = float(re.search(r"= ([\d.]+) limiter minutes", out)[1])  # type: ignore[index]
    assert minutes >= 1.0
