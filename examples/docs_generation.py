"""Generate Markdown documentation for a Python package: one agent per module in parallel, then an index.

- Every module gets its own agent call; at most `--concurrency` of them run at once (an anyio limiter).
- Each writes `<out>/<module>.md`: the facts read from the source (docstring, public classes and functions)
  and an overview written by the LLM.
- A reducer agent reads every module's result and writes `<out>/index.md`.
- A rich progress bar follows the modules as they finish (in whatever order they finish).
- Re-running skips the modules whose source (and model) did not change: their content hash is kept in
  `<out>/.hashes.json`.

Run it:  python examples/docs_generation.py [--package miniagents] [--out docs-generated] [--concurrency 3]
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import anyio
from _providers import add_provider_arguments, llm_agent
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from miniagents import InteractionContext, Message, MiniAgent, MiniAgents, TextMessage, miniagent
from miniagents.llms import LLMError

PROMPT_VERSION = "1"  # part of the content hash: changing the prompts regenerates everything


def find_modules(package: str) -> dict[str, Path]:
    """Map each module name of *package* to its source file (the package is located, not imported)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise SystemExit(f"cannot find package {package!r}")
    root = Path(spec.origin).parent
    if not spec.submodule_search_locations:  # a plain module
        return {package: Path(spec.origin)}
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join((package, *parts))] = path
    return modules


def outline(source: str) -> tuple[str, list[str]]:
    """The module docstring and the signatures of its public top-level classes and functions."""
    tree = ast.parse(source)
    items = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            prefix = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
            items.append(f"{prefix} {node.name}({ast.unparse(node.args)})")
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            items.append(f"class {node.name}")
    return ast.get_docstring(tree) or "", items


@miniagent
async def module_doc_agent(ctx: InteractionContext, module: str, path: str, out: str, llm: MiniAgent) -> None:
    """Document one module: its outline from the source, plus an overview asked from the LLM."""
    docstring, items = outline(await anyio.Path(path).read_text())
    prompt = (
        f"Write a short overview of the Python module `{module}` for its documentation.\n"
        f"Its docstring: {docstring[:600] or '(none)'}\n"
        f"Its public API: {', '.join(items[:20]) or '(nothing public)'}"
    )
    try:
        overview = (await llm.inquire(prompt).as_single_text()).strip()  # the model's text, whatever it is
    except LLMError as error:  # a failed model call costs this module its overview, nothing more
        overview = f"_The model call failed: {error}_"
    lines = [f"# `{module}`", "", docstring or "_No module docstring._", "", "## Public API", ""]
    lines += [f"- `{item}`" for item in items] or ["_Nothing public at the top level._"]
    lines += ["", "## Overview (written by the LLM)", "", overview or "_The model gave no overview._", ""]
    target = Path(out) / f"{module}.md"
    target.write_text("\n".join(lines))
    # The reply is what the reducer needs: a summary line, with the facts as message fields.
    summary = f"{module}: {docstring.partition(chr(10))[0]}"
    ctx.reply(
        TextMessage(content=summary, module=module, file=target.name, ok=not overview.startswith("_The"))
    )


@miniagent
async def index_agent(ctx: InteractionContext, package: str, out: str, llm: MiniAgent) -> None:
    """The reducer: read every module's summary and write the index page."""
    summaries = [message async for message in ctx.messages]
    listing = "\n".join(str(message) for message in summaries)
    prompt = f"Write a one-paragraph introduction to the Python package `{package}`. Its modules:\n{listing[:1500]}"
    try:
        intro = await llm.inquire(prompt).as_single_text()
    except LLMError as error:
        intro = f"_The model call failed: {error}_"
    lines = [f"# `{package}` documentation", "", intro.strip() or "_The model gave no introduction._", ""]
    lines += ["## Modules", ""]
    lines += [f"- [`{m.get('module')}`]({m.get('file')}): {str(m).partition(': ')[2]}" for m in summaries]
    (Path(out) / "index.md").write_text("\n".join(lines) + "\n")
    ctx.reply(f"wrote the index of {len(summaries)} modules")


def content_hash(path: Path, model: str) -> str:
    return hashlib.sha256(f"{PROMPT_VERSION}\0{model}\0".encode() + path.read_bytes()).hexdigest()


async def main(args: argparse.Namespace) -> None:
    out = Path(args.out)
    await anyio.Path(out).mkdir(parents=True, exist_ok=True)
    modules = find_modules(args.package)
    if args.limit:
        modules = dict(list(modules.items())[: args.limit])
    llm = llm_agent(args, alias="doc_writer", system="You write concise technical documentation.")
    model = f"{args.provider}:{args.model or ''}"

    hashes_file = out / ".hashes.json"
    old_hashes: dict[str, str] = json.loads(hashes_file.read_text()) if hashes_file.exists() else {}
    new_hashes = {module: content_hash(path, model) for module, path in modules.items()}
    todo = [m for m in modules if old_hashes.get(m) != new_hashes[m] or not (out / f"{m}.md").exists()]
    print(
        f"{len(modules)} modules in {args.package}: {len(todo)} to document, {len(modules) - len(todo)} unchanged"
    )

    summaries: dict[str, Message] = {}
    async with MiniAgents():
        limiter = anyio.CapacityLimiter(args.concurrency)  # bounded parallelism
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns) as progress:
            bar = progress.add_task("documenting modules", total=len(todo))

            async def document(module: str) -> None:
                async with limiter:
                    replies = module_doc_agent.inquire(
                        module=module, path=str(modules[module]), out=str(out), llm=llm
                    )
                    (summary,) = await replies
                summaries[module] = summary
                if summary.get("ok"):  # a module whose model call failed is retried on the next run
                    old_hashes[module] = new_hashes[
                        module
                    ]  # saved at once: an interrupted run keeps its work
                    hashes_file.write_text(json.dumps(old_hashes, indent=1, sort_keys=True))
                progress.update(bar, advance=1, description=f"done: {module}")

            async with anyio.create_task_group() as tg:
                for module in todo:
                    tg.start_soon(document, module)

        if todo or not (out / "index.md").exists():
            # The reducer gets every module's summary; unchanged modules are summarised from their page.
            for module in modules:
                if module not in summaries:
                    first = (out / f"{module}.md").read_text().splitlines()[2]
                    summaries[module] = TextMessage(
                        content=f"{module}: {first}", module=module, file=f"{module}.md"
                    )
            ordered = [summaries[m] for m in modules]
            print(
                await index_agent.inquire(
                    ordered, package=args.package, out=str(out), llm=llm
                ).as_single_text()
            )
        else:
            print("nothing changed: the index is up to date")
    print(f"documentation in {out}/ (index.md and {len(modules)} module pages)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", default="miniagents", help="the package to document")
    parser.add_argument("--out", default="docs-generated", help="the output folder")
    parser.add_argument("--concurrency", type=int, default=3, help="modules documented at the same time")
    parser.add_argument("--limit", type=int, help="document only the first N modules")
    add_provider_arguments(parser)
    anyio.run(main, parser.parse_args(), backend="trio")
    sys.exit(0)
