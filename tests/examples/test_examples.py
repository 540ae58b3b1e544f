"""Run every example as a program, non-interactively, and check it exits 0 and does what it promises.

The LLM examples run against the embedded local model (``--provider local``): a real server (llama.cpp's, from
the prebuilt ``xllamacpp`` wheel of the ``local`` extra), started per example (about a second).  The model's text is not coherent, so the
checks are about mechanics: files written, messages persisted, tool calls made, diffs refused.  Set
``MINIAGENTS_SKIP_REAL_LLM=1`` to skip them.  ``nox -s examples`` runs this file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import miniagents

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
sys.path.insert(0, str(EXAMPLES))  # for the unit checks of self_developing's diff handling

needs_local_model = pytest.mark.skipif(
    os.environ.get("MINIAGENTS_SKIP_REAL_LLM") == "1",
    reason="MINIAGENTS_SKIP_REAL_LLM=1: the local model server is not started",
)
LOCAL = ["--provider", "local", "--max-tokens", "24"]  # short answers: ~40-80 tokens/s on 2 cores


def run_example(name: str, *args: str, cwd: Path, stdin: str = "", timeout: float = 300) -> str:
    """Run examples/<name> with the local provider; assert it exits 0; return its stdout."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert result.returncode == 0, (
        f"{name} exited {result.returncode}\n{result.stdout}\n{result.stderr[-3000:]}"
    )
    return result.stdout


def test_parallel_research(tmp_path: Path) -> None:
    out = run_example("parallel_research.py", "--topics", "4", cwd=tmp_path)
    assert out.count("researcher-") == 4
    assert "Replayed 5 messages" in out  # 4 findings and the summary


@pytest.mark.real_llm
@needs_local_model
def test_conversation_persists_and_resumes(tmp_path: Path) -> None:
    from miniagents.persistence import StoreReader

    script = tmp_path / "turns.txt"
    script.write_text("Hello there!\nTell me about agents.\nexit\nnever read\n")
    out = run_example(
        "conversation.py", "--history", "chat.db", "--input-file", str(script), *LOCAL, cwd=tmp_path
    )
    assert out.count("assistant> ") == 2
    assert "never read" not in out  # `exit` ended the chat
    with StoreReader(tmp_path / "chat.db") as reader:
        history = reader.conversation("assistant", completed_only=True)
    assert [str(m) for m in history if m.get("role") == "user"] == ["Hello there!", "Tell me about agents."]
    assert [m.get("role") for m in history] == ["user", "assistant", "user", "assistant"]

    # stdin that is not a terminal is a script too; --resume continues the stored conversation
    out = run_example(
        "conversation.py", "--history", "chat.db", "--resume", *LOCAL, cwd=tmp_path, stdin="More?\n"
    )
    assert "(resumed 4 messages" in out
    with StoreReader(tmp_path / "chat.db") as reader:
        last_run = reader.calls(agent_alias="assistant")[-1].run_id
        resumed = reader.conversation("assistant", run_id=last_run, completed_only=True)
    assert [str(m) for m in resumed[:4]] == [str(m) for m in history]
    assert str(resumed[4]) == "More?"


@pytest.mark.real_llm
@needs_local_model
def test_conversation_ctrl_c_cancels_only_the_answer(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "conversation.py"), "--history", "chat.db", "--provider", "local"],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write("Tell me a long story.\nexit\n")
    process.stdin.close()
    process.stdin = None  # closed: communicate() below must not flush it
    seen = ""
    deadline = time.monotonic() + 240
    while "assistant> " not in seen and time.monotonic() < deadline:
        seen += process.stdout.read(1)
    time.sleep(0.3)  # let a few tokens stream
    process.send_signal(signal.SIGINT)
    rest, errors = process.communicate(timeout=120)
    assert process.returncode == 0, errors[-3000:]
    assert "[answer cancelled]" in rest
    assert "history saved" in rest  # the program went on to the next turn and ended normally


@pytest.mark.real_llm
@needs_local_model
def test_docs_generation_writes_pages_and_skips_unchanged(tmp_path: Path) -> None:
    # A small package of this project; its modules are counted from its files (one page each, __init__ as
    # the package's own page), so the test does not break when the package gains a module.
    package_dir = Path(miniagents.__file__).parent / "tracing"
    modules = sorted(
        ".".join(("miniagents.tracing", *p.relative_to(package_dir).with_suffix("").parts)).removesuffix(
            ".__init__"
        )
        for p in package_dir.rglob("*.py")
    )
    n = len(modules)
    assert n >= 3
    args = ["--package", "miniagents.tracing", "--out", "docs", "--concurrency", "2", *LOCAL]
    out = run_example("docs_generation.py", *args, cwd=tmp_path)
    assert f"{n} to document, 0 unchanged" in out
    docs = tmp_path / "docs"
    pages = sorted(p.name for p in docs.glob("*.md"))
    assert pages == sorted(["index.md", *(f"{m}.md" for m in modules)])
    assert "## Overview (written by the LLM)" in (docs / "miniagents.tracing._genai.md").read_text()
    assert "(miniagents.tracing._observer.md)" in (docs / "index.md").read_text()

    out = run_example("docs_generation.py", *args, cwd=tmp_path)  # nothing changed: nothing to redo
    if f"{n} modules in miniagents.tracing: 0 to document, {n} unchanged" not in out:
        # a module whose model call failed is retried; every other one must be skipped
        assert "to document" in out and "0 unchanged" not in out, out


@pytest.mark.real_llm
@needs_local_model
def test_self_developing_stays_in_its_sandbox(tmp_path: Path) -> None:
    out = run_example("self_developing.py", "--sandbox", "sandbox", "--rounds", "2", *LOCAL, cwd=tmp_path)
    assert "round 1: the tests fail; asking the LLM for a fix" in out
    assert "round 2:" in out
    assert "after 2 rounds the tests" in out
    assert (tmp_path / "sandbox" / "textstats.py").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sandbox"]  # nothing written elsewhere
    original = (EXAMPLES / "sample_project" / "textstats.py").read_text()
    assert 'split(" ")' in original  # the target project itself is never changed


@pytest.mark.real_llm
@needs_local_model
def test_tools_calls_agents_as_tools(tmp_path: Path) -> None:
    out = run_example("tools.py", "--provider", "local", "--max-tokens", "40", cwd=tmp_path)
    assert "model calls: calculator(" in out
    assert "calculator answers:" in out
    assert "model calls: file_search(" in out
    assert "file_search answers:" in out


@pytest.mark.real_llm
@needs_local_model
def test_mcp_tools_gives_the_tools_of_an_mcp_server_to_the_model(tmp_path: Path) -> None:
    out = run_example("mcp_tools.py", "--provider", "local", "--max-tokens", "60", cwd=tmp_path)
    assert "MCP tools: count_words (Count the words of a text.), reverse_text (" in out
    assert 'count_words answers: {"result": 3}' in out  # the MCP server ran the model's call
    assert 'reverse_text answers: {"result": "stnegainim"}' in out


# -- self_developing's diff handling, without a model -----------------------------------------------------------
FIX = "\n".join(
    [
        "--- a/textstats.py",
        "+++ b/textstats.py",
        "@@ -5,3 +5,3 @@",
        '     """Return the number of words in *text* (words are separated by any whitespace)."""',
        '-    return len(text.split(" "))  # bug: "a  b" and "a\\nb" are miscounted',
        "+    return len(text.split())",
        " ",
    ]
)


def test_a_real_diff_fixes_the_sample_project(tmp_path: Path) -> None:
    import shutil

    import self_developing

    sandbox = tmp_path / "sandbox"
    shutil.copytree(EXAMPLES / "sample_project", sandbox)
    assert self_developing.run_tests(sandbox)[0] is False
    assert self_developing.apply_diff(sandbox, self_developing.extract_diff(f"```diff\n{FIX}```")) == [
        "textstats.py"
    ]
    assert self_developing.run_tests(sandbox)[0] is True


@pytest.mark.parametrize(
    "path", ["../outside.py", "/etc/passwd", "sub/../../outside.py", "link/escape.py"], ids=repr
)
def test_paths_escaping_the_sandbox_are_refused(tmp_path: Path, path: str) -> None:
    import self_developing

    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    (sandbox / "link").symlink_to(tmp_path)  # a symlink pointing out of the sandbox
    diff = f"--- a/{path}\n+++ b/{path}\n@@ -0,0 +1 @@\n+pwned\n"
    with pytest.raises(self_developing.PatchError, match="refusing"):
        self_developing.apply_diff(sandbox, diff)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sandbox"]


def test_an_answer_without_a_diff_is_reported() -> None:
    import self_developing

    with pytest.raises(self_developing.PatchError, match="no unified diff"):
        self_developing.apply_diff(Path("."), "Sure! I would change the split call.")
