"""An agent that improves code: it asks the LLM for a unified diff, applies it in a sandbox, runs the tests.

1. The target project (default: `examples/sample_project`, which has a bug its tests catch) is copied into a
   sandbox folder; nothing outside the sandbox is ever written.
2. Each round: the project's tests run in a subprocess (`python -m unittest`); if they pass, we are done.
   Otherwise the LLM gets the sources and the failures and is asked for a fix as a unified diff.
3. The diff is applied to the sandbox copy.  A path that would escape the sandbox (absolute, `..`, through a
   symlink) is refused; an answer that is not a diff, or does not apply, is fed back to the LLM next round.
4. At most `--rounds` rounds.

Caution: step 2 runs code the model wrote, with your permissions.  The sandbox guarantees that *applying a
diff* never writes outside it; it does not contain what the tests then execute.  Use a container or a
throw-away user for projects and models you do not trust.

Run it:  python examples/self_developing.py [--project DIR] [--sandbox DIR] [--rounds 3]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import anyio
import anyio.to_thread
from _providers import add_provider_arguments, llm_agent

from miniagents import InteractionContext, MiniAgent, MiniAgents, miniagent
from miniagents.llms import LLMError

SYSTEM = (
    "You fix Python code. Answer with a unified diff only (--- a/FILE, +++ b/FILE, @@ hunks), "
    "with paths relative to the project root."
)


MARKER = ".self-developing-sandbox"


class PatchError(Exception):
    """The answer is not a diff, does not apply, or touches a path outside the sandbox."""


def sandbox_path(sandbox: Path, name: str) -> Path:
    """Resolve *name* inside *sandbox*; refuse anything that would land outside it."""
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise PatchError(f"refusing {name!r}: not a relative path inside the sandbox")
    target = (sandbox / relative).resolve()  # resolves symlinks too
    if not target.is_relative_to(sandbox.resolve()):
        raise PatchError(f"refusing {name!r}: it resolves to {target}, outside the sandbox")
    return target


HUNK = re.compile(r"^@@ -(\d+)(?:,\d+)? \+\d+(?:,\d+)? @@")


def parse_diff(text: str) -> dict[str, list[list[str]]]:
    """Split a unified diff into {path: [hunk lines...]}; raise PatchError if there is none."""
    files: dict[str, list[list[str]]] = {}
    current: list[list[str]] | None = None
    for line in text.splitlines():
        if line.startswith("+++ "):
            name = line[4:].split("\t")[0].strip()
            name = name[2:] if name.startswith(("a/", "b/")) else name
            current = files.setdefault(name, [])
        elif line.startswith("@@") and current is not None:
            current.append([line])
        elif current and line[:1] in (" ", "+", "-", "") and not line.startswith("--- "):
            current[-1].append(line)
    if not any(files.values()):
        raise PatchError("the answer contains no unified diff")
    return files


def apply_hunks(original: list[str], hunks: list[list[str]]) -> list[str]:
    """Apply hunks to the lines of a file; each hunk's context must match (searched near its line number)."""
    lines = list(original)
    offset = 0
    for hunk in hunks:
        match = HUNK.match(hunk[0])
        if not match:
            raise PatchError(f"bad hunk header {hunk[0]!r}")
        old = [line[1:] for line in hunk[1:] if line[:1] in (" ", "-", "")]
        new = [line[1:] for line in hunk[1:] if line[:1] in (" ", "+", "")]
        start = max(int(match.group(1)) - 1 + offset, 0)
        # the context must match exactly: at the stated line, or the nearest place where it does
        candidates = sorted(range(len(lines) - len(old) + 1), key=lambda i: abs(i - start))
        at = next((i for i in candidates if lines[i : i + len(old)] == old), None)
        if at is None:
            raise PatchError(f"hunk {hunk[0]!r} does not match the file")
        lines[at : at + len(old)] = new
        offset += len(new) - len(old)
    return lines


def apply_diff(sandbox: Path, diff: str) -> list[str]:
    """Apply *diff* to the files in *sandbox*; return the changed paths.  All or nothing."""
    changes = {}
    for name, hunks in parse_diff(diff).items():
        path = sandbox_path(sandbox, name)  # checked before anything is written
        original = path.read_text().splitlines() if path.exists() else []
        changes[path] = apply_hunks(original, hunks)
    for path, lines in changes.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
    return [str(path.relative_to(sandbox.resolve())) for path in changes]


def run_tests(sandbox: Path) -> tuple[bool, str]:
    """Run the project's tests in a subprocess; return (passed, output)."""
    result = subprocess.run(
        [sys.executable, "-m", "unittest", "-q"], cwd=sandbox, capture_output=True, text=True, timeout=120
    )
    return result.returncode == 0, (result.stdout + result.stderr)[-2000:]


def read_sources(root: Path) -> str:
    """The project's Python files, each under a `# name` header."""
    return "\n\n".join(f"# {path.name}\n{path.read_text()}" for path in sorted(root.glob("*.py")))


def extract_diff(answer: str) -> str:
    """The diff in a ```diff fenced block if there is one, else the whole answer."""
    fenced = re.search(r"```(?:diff|patch)?\n(.*?)```", answer, re.DOTALL)
    return fenced.group(1) if fenced else answer


@miniagent
async def developer(ctx: InteractionContext, sandbox: str, rounds: int, llm: MiniAgent) -> None:
    """Loop: test, ask the LLM for a diff, apply it; feed every failure back; stop when green or out of rounds."""
    root = Path(sandbox)
    feedback = ""
    for round_no in range(1, rounds + 1):
        passed, output = await anyio.to_thread.run_sync(run_tests, root)
        if passed:
            ctx.reply(f"round {round_no}: the tests pass")
            return
        ctx.reply(f"round {round_no}: the tests fail; asking the LLM for a fix")
        sources = await anyio.to_thread.run_sync(read_sources, root)
        prompt = (
            f"{sources}\n\nTest output:\n{output}\n{feedback}\nReply with a unified diff that fixes the bug."
        )
        try:
            answer = await llm.inquire(prompt).as_single_text()
        except LLMError as error:
            feedback = f"(The previous request failed: {error})"
            ctx.reply(f"round {round_no}: the model call failed: {error}")
            continue
        try:
            changed = apply_diff(root, extract_diff(answer))
        except PatchError as error:
            ctx.reply(f"round {round_no}: not applied: {error} (the answer began {answer[:60]!r})")
            feedback = f"Your previous answer could not be used ({error}). It was:\n{answer[:500]}"
            continue
        ctx.reply(f"round {round_no}: applied a diff to {', '.join(changed)}")
        feedback = "Your previous diff was applied, but the tests still fail."
    passed, _ = await anyio.to_thread.run_sync(run_tests, root)
    ctx.reply(f"after {rounds} rounds the tests {'pass' if passed else 'still fail'}")


def make_sandbox(project: Path, sandbox: Path) -> None:
    """Copy *project* into a fresh *sandbox* folder (replacing only a sandbox this program made)."""
    if sandbox.exists():  # only ever delete a folder this program created
        if not (sandbox / MARKER).exists():
            raise SystemExit(
                f"{sandbox} exists and is not a sandbox made by this program: choose another --sandbox"
            )
        shutil.rmtree(sandbox)
    shutil.copytree(project, sandbox, ignore=shutil.ignore_patterns("__pycache__"))
    (sandbox / MARKER).write_text("a copy made by examples/self_developing.py; deleted on the next run\n")


async def main(args: argparse.Namespace) -> None:
    sandbox = Path(args.sandbox)
    make_sandbox(args.project, sandbox)
    print(f"copied {args.project} into the sandbox {sandbox}")
    llm = llm_agent(args, alias="coder", system=SYSTEM)
    async with MiniAgents():
        async for message in developer.inquire(sandbox=str(sandbox), rounds=args.rounds, llm=llm):
            print(message)  # progress reports stream as the developer agent makes them


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=Path(__file__).parent / "sample_project")
    parser.add_argument("--sandbox", type=Path, default=Path("sandbox"), help="replaced on every run")
    parser.add_argument("--rounds", type=int, default=3)
    add_provider_arguments(parser)
    anyio.run(main, parser.parse_args(), backend="trio")
