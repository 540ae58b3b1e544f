"""What ``miniagents.durable`` relies on in DBOS (see ``miniagents/durable/_dbos_api.py``): this fails loudly when a
DBOS release changes it, or when the installed release leaves the pinned range."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from dbos import DBOS, SetWorkflowID

from miniagents import MiniAgents
from miniagents.durable import DurableConfigError, DurableRuntime, _dbos_api

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


def test_the_installed_dbos_is_in_the_pinned_range_and_pyproject_pins_the_same() -> None:
    _dbos_api.check_version()
    match = re.search(r'^durable = \["([^"]+)"\]$', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert match, "pyproject.toml has no `durable` extra"
    requirement = match[1]
    low, high = _dbos_api.DBOS_VERSION_RANGE
    assert re.sub(r"\s", "", requirement) == f"dbos>={low[0]}.{low[1]},<{high[0]}.{high[1]}"


def test_a_release_outside_the_range_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_dbos_api, "installed_version", lambda: (3, 5, 0))
    with pytest.raises(DurableConfigError, match=r"dbos>=3\.4,<3\.5"):
        _dbos_api.check_version()


calls: list[str] = []


async def _cancelled() -> str:
    calls.append("cancelled")
    raise asyncio.CancelledError


async def _answer() -> str:
    calls.append("answer")
    return "answer"


@DBOS.workflow(name="tests.durable.step_probe")
async def _step_probe() -> str:
    with contextlib.suppress(asyncio.CancelledError):
        await DBOS.run_step_async({"name": "probe"}, _cancelled)
    return await DBOS.run_step_async({"name": "probe"}, _answer)


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[DurableRuntime]:
    async with MiniAgents(), DurableRuntime(f"sqlite:///{tmp_path / 'dbos.db'}") as rt:
        yield rt


async def test_a_cancelled_step_records_nothing_and_a_started_workflow_is_not_run_twice(
    runtime: DurableRuntime,
) -> None:
    async def start() -> tuple[str, list[tuple[int, str, object]]]:
        with SetWorkflowID("probe-1"):
            handle = await DBOS.start_workflow_async(_step_probe)
        result = await handle.get_result()
        with SetWorkflowID("probe-1"):
            again = await DBOS.start_workflow_async(_step_probe)  # the same id: not executed again
        assert await again.get_result() == result
        steps = await DBOS.list_workflow_steps_async("probe-1")
        return result, [(s["function_id"], s["function_name"], s["output"]) for s in steps]

    calls.clear()
    result, steps = await runtime.bridge.to_dbos(start)
    assert result == "answer"
    assert calls == ["cancelled", "answer"]
    # The cancelled step drew id 1 and recorded nothing; the next step is id 2.
    assert [(fid, name) for fid, name, _ in steps] == [(2, "probe")]
