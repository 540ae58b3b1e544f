"""Run the benchmark suite: ours (trio + asyncio) vs upstream miniagents 0.0.35 vs the anyio floor (W1-W5),
and ours vs the official ``openai`` client reading the same OpenAI stream (W6).

Usage::

    python benchmarks/run.py            # full run (what `nox -s bench` does), ~8-9 minutes on 2 cores
    python benchmarks/run.py --quick    # smoke run with reduced sizes, ~1-2 minutes
    python benchmarks/run.py --only w1,w3 --impls ours,floor --write-docs no
    python benchmarks/run.py --from-json benchmarks/.cache/results-....json --write-docs yes

Every repetition of every (workload, implementation, backend) runs in its own subprocess, interleaved across
implementations; ours and upstream share the import name ``miniagents``, so upstream runs from its own
virtualenv (created here on first use, by default under ``benchmarks/.cache/``, or set
``BENCH_UPSTREAM_PYTHON`` to an interpreter that has ``miniagents==0.0.35``).  W6's reference, the ``openai``
client, also gets its own virtualenv (``benchmarks/.cache/openai-venv-<version>``, or ``BENCH_OPENAI_PYTHON``),
and W6's stream server (``w6_server.py``) runs in a process of its own for the whole run.

The table goes to stdout.  A full run of everything that has no failure also rewrites ``docs/benchmarks.md``
and ``docs/benchmarks-w3.png`` (``--write-docs yes|no`` overrides).  Raw results go to
``benchmarks/.cache/results-*.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = HERE / ".cache"
DOCS = ROOT / "docs"
UPSTREAM_VERSION = "0.0.35"
# W6 reference: the official client, pinned (trio is installed next to it: the client runs on both backends).
OPENAI_VERSION = "3.57.0"
# Which checkout "ours" is imported from: the working tree by default; BENCH_OURS_PATH benchmarks another
# one (e.g. a `git archive` snapshot of a commit), BENCH_OURS_LABEL names it in the report.
OURS_ROOT = Path(os.environ.get("BENCH_OURS_PATH", ROOT)).resolve()
MARKER = "BENCH_RESULT "

# (implementation, backend) columns, in table order.
COLUMNS = [
    ("ours", "trio"),
    ("ours", "asyncio"),
    ("floor", "trio"),
    ("floor", "asyncio"),
    ("upstream", "asyncio"),
    ("openai", "trio"),
    ("openai", "asyncio"),
]
# Which implementations run which workloads (W6 is an LLM-client workload: ours vs the openai client).
IMPL_WORKLOADS = {
    "ours": {"w1", "w2", "w3", "w4", "w4r", "w5", "w6"},
    "floor": {"w1", "w2", "w3", "w4", "w4r", "w5"},
    "floor-naive": {"w1", "w2", "w3", "w4", "w4r", "w5"},
    "upstream": {"w1", "w2", "w3", "w4", "w4r", "w5"},
    "openai": {"w6"},
}
SCRIPTS = {
    "ours": "impl_ours.py",
    "floor": "impl_floor.py",
    "floor-naive": "impl_floor.py",
    "upstream": "impl_upstream.py",
    "openai": "impl_openai.py",
}


@dataclass
class Plan:
    """Sizes and repetitions of one run.  ``upstream_*`` caps apply to upstream only (it is 100x slower)."""

    w1: int
    w2: int
    w3: list[int]
    w4: int
    w4r: int
    w5: int
    w5_consumers: int
    reps: int
    w3_reps: dict[int, int]
    upstream_caps: dict[str, int] = field(default_factory=dict)
    upstream_w3_max: int = 10_000
    warmup: dict[str, int] = field(default_factory=dict)
    w6: int = 20_000


FULL = Plan(
    w1=10_000,
    w2=100_000,
    w3=[1_000, 10_000, 100_000],
    w4=1_000_000,
    w4r=200_000,
    w5=10_000,
    w5_consumers=100,
    reps=3,
    w3_reps={1_000: 3, 10_000: 3, 100_000: 2},
    # Measured on the 2-core CI-size machine: upstream needs ~0.5 ms per W2 message, ~40 us per W4 token and
    # ~170 us per re-streamed W4r token; at full size these alone would take ~6 minutes per repetition.
    upstream_caps={"w2": 10_000, "w4": 100_000, "w4r": 20_000},
    # Upstream W3 at N=100k took 385 s of CPU and ~4.9 GB RSS in a one-off measurement: not run by default.
    upstream_w3_max=10_000,
    warmup={"w1": 200, "w2": 1_000, "w3": 100, "w4": 10_000, "w4r": 2_000, "w5": 200, "w6": 1_000},
    # The openai client needs ~250 us per token on the 2-core machine (ours ~50): 20k tokens keep W6 under
    # a minute for 3 repetitions of 4 columns.  The per-token cost is flat from 10k to 100k tokens.
    w6=20_000,
)

QUICK = Plan(
    w1=1_000,
    w2=10_000,
    w3=[1_000, 5_000],
    w4=100_000,
    w4r=20_000,
    w5=1_000,
    w5_consumers=20,
    reps=2,
    w3_reps={1_000: 2, 5_000: 2},
    upstream_caps={"w2": 2_000, "w4": 20_000, "w4r": 5_000},
    upstream_w3_max=1_000,
    warmup={"w1": 50, "w2": 200, "w3": 50, "w4": 1_000, "w4r": 500, "w5": 50, "w6": 200},
    w6=5_000,
)

WORKLOAD_TITLES = {
    "w1": "W1 sequential calls",
    "w2": "W2 pipeline, 5 forwarders",
    "w3": "W3 fan-out",
    "w4": "W4 token streaming, pass-through",
    "w4r": "W4r token streaming, re-streamed",
    "w5": "W5 replay",
    "w6": "W6 SSE parsing, OpenAI stream",
}


# --- environment --------------------------------------------------------------------------------------


def reference_python(
    log: Any, *, env_prefix: str, venv_name: str, version_check: str, version: str, packages: list[str]
) -> str:
    """Return an interpreter for a reference implementation, creating its own virtualenv if needed.

    ``BENCH_<env_prefix>_PYTHON`` names an interpreter to use as it is; ``BENCH_<env_prefix>_VENV`` moves the
    virtualenv (default ``benchmarks/.cache/<venv_name>``).  An existing one is reused when *version_check*
    (Python code) prints *version*.
    """
    explicit = os.environ.get(f"BENCH_{env_prefix}_PYTHON")
    if explicit:
        return explicit
    venv = Path(os.environ.get(f"BENCH_{env_prefix}_VENV", CACHE / venv_name))
    py = venv / "bin" / "python"
    if py.exists():
        out = subprocess.run(
            [str(py), "-c", version_check], capture_output=True, text=True, cwd=HERE, env=_clean_env()
        )
        if out.returncode == 0 and out.stdout.strip() == version:
            return str(py)
    log(f"creating the virtualenv {venv} ({', '.join(packages)}) ...")
    venv.parent.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    except subprocess.CalledProcessError:
        subprocess.run([sys.executable, "-m", "virtualenv", "--clear", str(venv)], check=True)
    subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *packages],
        check=True,
        env=_clean_env(),
    )
    return str(py)


def upstream_python(log: Any) -> str:
    """Return an interpreter with upstream ``miniagents==0.0.35``, creating its virtualenv if needed."""
    return reference_python(
        log,
        env_prefix="UPSTREAM",
        venv_name=f"upstream-venv-{UPSTREAM_VERSION}",
        version_check="import importlib.metadata as m; print(m.version('miniagents'))",
        version=UPSTREAM_VERSION,
        packages=[f"miniagents=={UPSTREAM_VERSION}"],
    )


def openai_python(log: Any) -> str:
    """Return an interpreter with ``openai`` (W6's reference client) and trio, creating its virtualenv."""
    return reference_python(
        log,
        env_prefix="OPENAI",
        venv_name=f"openai-venv-{OPENAI_VERSION}",
        version_check="import trio, openai; print(openai.__version__)",
        version=OPENAI_VERSION,
        packages=[f"openai=={OPENAI_VERSION}", "trio"],
    )


class W6Server:
    """``w6_server.py`` in its own process for the whole run; its URL goes to the W6 jobs' environment."""

    def __init__(self, sizes: Iterable[int]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "w6_server.py"), *map(str, sorted(set(sizes)))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=HERE,
            env=_clean_env(pythonpath=str(OURS_ROOT)),
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self.close()
            raise RuntimeError(f"the W6 server did not start (exit {self.proc.returncode})")

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()  # the server exits when its stdin closes
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _clean_env(pythonpath: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BENCH_FLOOR_NAIVE")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONHASHSEED"] = "0"
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


def ours_label() -> str:
    """The commit "ours" was measured at (and whether its package had uncommitted changes)."""
    label = os.environ.get("BENCH_OURS_LABEL")
    if label:
        return label

    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(OURS_ROOT), *args], capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return f"{OURS_ROOT} (not a git checkout)"
    dirty = git("status", "--porcelain", "--", "miniagents")
    return f"commit {commit}" + (" + uncommitted changes in miniagents/" if dirty else "")


def machine_facts() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "ours": ours_label(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg": os.getloadavg(),
    }


# --- running ------------------------------------------------------------------------------------------


@dataclass
class Job:
    workload: str
    impl: str
    backend: str
    size: int
    reps: int
    warmup: int
    consumers: int = 0
    measure_rss: bool = False


def run_once(job: Job, pythons: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run one subprocess: an untimed warm-up, then one timed repetition of *job*."""
    cmd = [
        pythons[job.impl],
        str(HERE / SCRIPTS[job.impl]),
        "--workload",
        job.workload,
        "--size",
        str(job.size),
        "--backend",
        job.backend,
        "--warmup",
        str(job.warmup),
        "--reps",
        "1",
    ]
    if job.workload == "w5":
        cmd += ["--consumers", str(job.consumers)]
    if job.measure_rss:
        cmd.append("--measure-rss")
    if job.impl == "ours":
        env = _clean_env(pythonpath=str(OURS_ROOT))
    else:
        env = _clean_env()
        if job.impl == "floor-naive":
            env["BENCH_FLOOR_NAIVE"] = "1"
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE, env=env, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARKER)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{tail}")
    res: dict[str, Any] = json.loads(lines[-1][len(MARKER) :])
    _check_identity(job, res)
    return res


def summarize(job: Job, runs: list[dict[str, Any]]) -> dict[str, Any]:
    times = [t for r in runs for t in r["times"]]
    walls = [t for r in runs for t in r["walls"]]
    return {
        "workload": job.workload,
        "impl": job.impl,
        "backend": job.backend,
        "size": job.size,
        "consumers": job.consumers or None,
        "units": job.size * (job.consumers or 1),
        "times": times,
        "walls": walls,
        "rss_per_unit": [r["rss_per_unit"] for r in runs if r.get("rss_per_unit") is not None],
        "median": statistics.median(times),
        "median_wall": statistics.median(walls),
        "miniagents_file": runs[-1].get("miniagents_file"),
        "miniagents_version": runs[-1].get("miniagents_version"),
        "openai_version": runs[-1].get("openai_version"),
    }


def schedule(jobs: list[Job]) -> list[tuple[Job, int]]:
    """Interleave repetitions: rep 1 of every implementation of a workload/size, then rep 2, ...

    Each repetition is its own process, so a slow patch of machine time (other processes on the same cores)
    hits every implementation alike instead of one of them.
    """
    groups: dict[tuple[str, int], list[Job]] = {}
    for job in jobs:
        groups.setdefault((job.workload, job.size if job.workload == "w3" else 0), []).append(job)
    order: list[tuple[Job, int]] = []
    for group in groups.values():
        for rep in range(max(j.reps for j in group)):
            order += [(j, rep) for j in group if rep < j.reps]
    return order


def _check_identity(job: Job, res: dict[str, Any]) -> None:
    """Make sure each subprocess imported the ``miniagents`` it was meant to."""
    if job.impl == "openai":
        return
    path = res.get("miniagents_file") or ""
    if job.impl == "ours" and not path.startswith(str(OURS_ROOT / "miniagents")):
        raise RuntimeError(f"'ours' imported miniagents from {path}, not from {OURS_ROOT}")
    if job.impl == "upstream" and (
        res.get("miniagents_version") != UPSTREAM_VERSION
        or path.startswith(str(ROOT / "miniagents"))
        or "site-packages" not in path
    ):
        raise RuntimeError(f"'upstream' imported miniagents {res.get('miniagents_version')} from {path}")


def build_jobs(plan: Plan, workloads: list[str], columns: list[tuple[str, str]]) -> list[Job]:
    jobs: list[Job] = []
    for wl in workloads:
        for impl, backend in columns:
            if wl not in IMPL_WORKLOADS[impl]:
                continue
            up = impl == "upstream"
            if wl == "w3":
                for n in plan.w3:
                    if up and n > plan.upstream_w3_max:
                        continue
                    jobs.append(
                        Job(
                            wl,
                            impl,
                            backend,
                            n,
                            plan.w3_reps.get(n, plan.reps),
                            plan.warmup["w3"],
                            measure_rss=True,
                        )
                    )
                continue
            size = getattr(plan, wl)
            if up and wl in plan.upstream_caps:
                size = min(size, plan.upstream_caps[wl])
            consumers = plan.w5_consumers if wl == "w5" else 0
            jobs.append(Job(wl, impl, backend, size, plan.reps, plan.warmup[wl], consumers=consumers))
    return jobs


# --- reporting ----------------------------------------------------------------------------------------


def per_unit(res: dict[str, Any]) -> float:
    """Median seconds per unit (call, message, token, message x consumer)."""
    return float(res["median"] / res["units"])


def fmt_cost(workload: str, res: dict[str, Any] | None) -> str:
    if res is None:
        return "—"
    if workload in ("w4", "w4r"):
        return f"{res['units'] / res['median']:,.0f}"
    return f"{per_unit(res) * 1e6:,.2f}"


def fmt_ratio(ours: dict[str, Any] | None, ref: dict[str, Any] | None) -> str:
    if ours is None or ref is None:
        return "—"
    r = per_unit(ours) / per_unit(ref)
    return f"{r:.2f}" + (f" ({1 / r:.1f}x faster)" if r < 1 else f" ({r:.1f}x slower)")


def fmt_mem_ratio(ours: float | None, ref: float | None) -> str:
    if ours is None or ref is None or ref <= 0:
        return "—"
    r = ours / ref
    return f"{r:.2f}" + (f" ({1 / r:.1f}x less)" if r < 1 else f" ({r:.1f}x more)")


UNITS = {
    "w1": "µs / call",
    "w2": "µs / message",
    "w3": "µs / call",
    "w4": "tokens / s",
    "w4r": "tokens / s",
    "w5": "µs / message / consumer",
    "w6": "µs / token",
}


def size_label(res: dict[str, Any] | None) -> str:
    if res is None:
        return ""
    if res["workload"] == "w5":
        return f"{res['size']:,}x{res['consumers']}"
    return f"{res['size']:,}"


def render(
    results: list[dict[str, Any]], plan: Plan, facts: dict[str, Any], elapsed: float, quick: bool
) -> str:
    by: dict[tuple[str, str, str, int], dict[str, Any]] = {}
    for r in results:
        by[(r["workload"], r["impl"], r["backend"], r["size"])] = r

    def get(wl: str, impl: str, backend: str, size: int | None = None) -> dict[str, Any] | None:
        if size is not None:
            return by.get((wl, impl, backend, size))
        cands = [r for (w, i, b, _), r in by.items() if (w, i, b) == (wl, impl, backend)]
        return max(cands, key=lambda r: r["size"]) if cands else None

    main_results = [r for r in results if r["workload"] != "w6"]
    cols = [c for c in COLUMNS if any(r["impl"] == c[0] and r["backend"] == c[1] for r in main_results)]
    extra = sorted({(r["impl"], r["backend"]) for r in main_results} - set(COLUMNS))
    cols += extra
    head = ["workload", "size", "unit", *[f"{i} [{b}]" for i, b in cols]]
    head += ["ours/upstream trio", "ours/upstream asyncio", "ours/floor trio", "ours/floor asyncio"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(wl: str, size: int | None, label: str) -> None:
        cells = []
        sizes = []
        for impl, backend in cols:
            r = get(wl, impl, backend, size)
            cells.append(fmt_cost(wl, r))
            sizes.append(size_label(r))
        common = {s for s in sizes if s}
        size_txt = ", ".join(sorted(common, key=lambda s: -len(s)))
        up = get(wl, "upstream", "asyncio", size)
        if up is not None and size is None and len(common) > 1:
            size_txt = f"{size_label(get(wl, 'ours', 'trio'))} (upstream: {size_label(up)}†)"
        ratios = [
            fmt_ratio(get(wl, "ours", "trio", size), up),
            fmt_ratio(get(wl, "ours", "asyncio", size), up),
            fmt_ratio(get(wl, "ours", "trio", size), get(wl, "floor", "trio", size)),
            fmt_ratio(get(wl, "ours", "asyncio", size), get(wl, "floor", "asyncio", size)),
        ]
        lines.append("| " + " | ".join([label, size_txt, UNITS[wl], *cells, *ratios]) + " |")

    workloads = sorted({r["workload"] for r in results}, key=lambda w: list(WORKLOAD_TITLES).index(w))
    for wl in workloads:
        if wl == "w6":
            continue
        if wl == "w3":
            for n in plan.w3:
                row("w3", n, f"W3 fan-out, N={n:,}")
        else:
            row(wl, None, WORKLOAD_TITLES[wl])

    out = [
        "Per-unit cost = median over repetitions of the benchmark process's CPU time for the measured region "
        "(on an idle machine this equals wall time: the workloads are CPU-bound and do no I/O).",
        "Ratios are ours ÷ reference of the per-unit cost (tokens/s are inverted to time per token first): "
        "below 1 means ours is cheaper.",
        "",
        *lines,
    ]
    if not main_results:
        out = []

    if "w3" in workloads:
        out += [
            "",
            "W3 memory: peak RSS growth per call (KiB; peak RSS of the run minus RSS just before it, ÷ N).",
            "",
        ]
        mh = ["N", *[f"{i} [{b}]" for i, b in cols], "ours/upstream trio", "ours/upstream asyncio"]
        out += ["| " + " | ".join(mh) + " |", "|" + "---|" * len(mh)]
        for n in plan.w3:
            vals = []
            for impl, backend in cols:
                r = get("w3", impl, backend, n)
                vals.append(statistics.median(r["rss_per_unit"]) / 1024 if r and r["rss_per_unit"] else None)
            up = vals[cols.index(("upstream", "asyncio"))] if ("upstream", "asyncio") in cols else None
            cells = [f"{v:,.2f}" if v is not None else "—" for v in vals]
            r_t = fmt_mem_ratio(vals[cols.index(("ours", "trio"))] if ("ours", "trio") in cols else None, up)
            r_a = fmt_mem_ratio(
                vals[cols.index(("ours", "asyncio"))] if ("ours", "asyncio") in cols else None, up
            )
            out.append("| " + " | ".join([f"{n:,}", *cells, r_t, r_a]) + " |")
        lo, hi = plan.w3[0], plan.w3[-1]
        out += ["", f"W3 flatness: per-call cost at N={hi:,} ÷ at N={lo:,}", ""]
        out += ["| " + " | ".join(f"{i} [{b}]" for i, b in cols) + " |", "|" + "---|" * len(cols)]
        cells = []
        for impl, backend in cols:
            a, b = get("w3", impl, backend, lo), get("w3", impl, backend, hi)
            cells.append(f"{per_unit(b) / per_unit(a):.2f}" if a and b else "— (not run)")
        out.append("| " + " | ".join(cells) + " |")

    if "w6" in workloads:
        out += ["", *render_w6(get)]

    out += ["", *targets(get, plan, workloads)]
    notes = [
        "",
        "Notes:",
        f"- Repetitions: {plan.reps} per workload (W3: "
        + ", ".join(f"N={n:,}: {k}" for n, k in plan.w3_reps.items())
        + "); each repetition is a fresh process that first does an untimed warm-up run, and repetitions "
        "are interleaved across implementations.",
    ]
    if plan.upstream_caps or plan.upstream_w3_max < max(plan.w3):
        caps = ", ".join(f"{WORKLOAD_TITLES[w].split()[0]} at {n:,}" for w, n in plan.upstream_caps.items())
        notes.append(
            f"- † Upstream runs at reduced sizes because it is 1-2 orders of magnitude slower: {caps}; "
            f"W3 only up to N={plan.upstream_w3_max:,}. Its per-unit cost does not fall with size (it rises), "
            "so the ratios flatter upstream, if anything."
        )
    if facts.get("ours"):
        notes.append(f"- Ours measured at {facts['ours']}.")
    notes.append(
        f"- Machine: {facts['cpu']}, {facts['cores']} cores, Python {facts['python']}; load average at start "
        f"{facts['loadavg'][0]:.2f}, at end {facts.get('loadavg_end', (0,))[0]:.2f}; run took {elapsed:.0f} s"
        + (
            f" of wall time and {facts['children_cpu']:.0f} s of CPU in the benchmark processes "
            "(about the wall time on an idle machine)"
            if "children_cpu" in facts
            else ""
        )
        + (" (--quick: reduced sizes, not comparable with the full table)." if quick else ".")
    )
    return "\n".join(out + notes)


def targets(get: Any, plan: Plan, workloads: list[str]) -> list[str]:
    """Issue #5 targets, checked on the numbers of this run."""
    rows = ["Targets (issue #5):", "", "| target | trio | asyncio |", "|---|---|---|"]

    def ok(flag: bool | None) -> str:
        return "—" if flag is None else ("met" if flag else "**missed**")

    def ratio(wl: str, backend: str, ref_impl: str, size: int | None = None) -> float | None:
        o = get(wl, "ours", backend, size)
        ref = get(wl, ref_impl, "asyncio" if ref_impl == "upstream" else backend, size)
        return per_unit(o) / per_unit(ref) if o and ref else None

    def cell(value: float | None, good: bool | None, fmt: str = "{:.3f}") -> str:
        return "—" if value is None else f"{fmt.format(value)} {ok(good)}"

    for wl in ("w1", "w2"):
        if wl not in workloads:
            continue
        for label, ref, limit in (
            (f"{wl.upper()} ≥5x faster than upstream (ratio ≤ 0.20)", "upstream", 0.2),
            (f"{wl.upper()} within 1.5x of floor (ratio ≤ 1.5)", "floor", 1.5),
        ):
            cs = []
            for b in ("trio", "asyncio"):
                r = ratio(wl, b, ref)
                cs.append(cell(r, None if r is None else r <= limit))
            rows.append(f"| {label} | {cs[0]} | {cs[1]} |")
    if "w3" in workloads:
        up_sizes = [n for n in plan.w3 if n <= plan.upstream_w3_max]
        n10 = 10_000 if 10_000 in up_sizes else (up_sizes[-1] if up_sizes else plan.w3[-1])
        cs, cm = [], []
        for b in ("trio", "asyncio"):
            r = ratio("w3", b, "upstream", n10)
            cs.append(cell(r, None if r is None else r <= 0.1))
            o, u = get("w3", "ours", b, n10), get("w3", "upstream", "asyncio", n10)
            if o and u and o["rss_per_unit"] and u["rss_per_unit"]:
                m = statistics.median(o["rss_per_unit"]) / statistics.median(u["rss_per_unit"])
                cm.append(cell(m, m <= 0.2))
            else:
                cm.append("—")
        rows.append(f"| W3 ≥10x faster than upstream at N={n10:,} (ratio ≤ 0.10) | {cs[0]} | {cs[1]} |")
        rows.append(
            f"| W3 ≥5x less memory/call than upstream at N={n10:,} (ratio ≤ 0.20) | {cm[0]} | {cm[1]} |"
        )
        lo, hi = plan.w3[0], plan.w3[-1]
        cf = []
        for b in ("trio", "asyncio"):
            a, z = get("w3", "ours", b, lo), get("w3", "ours", b, hi)
            f = per_unit(z) / per_unit(a) if a and z else None
            cf.append(cell(f, None if f is None else f <= 1.3))
        rows.append(f"| W3 per-call cost N={hi:,} ÷ N={lo:,} ≤ 1.3 | {cf[0]} | {cf[1]} |")
    if "w4" in workloads:
        cs = []
        for b in ("trio", "asyncio"):
            o = get("w4", "ours", b)
            rate = o["units"] / o["median"] if o else None
            cs.append(cell(rate, None if rate is None else rate >= 1e6, "{:,.0f} tokens/s"))
        rows.append(f"| W4 ≥ 1,000,000 tokens/s | {cs[0]} | {cs[1]} |")
    if "w5" in workloads:
        cs = []
        for b in ("trio", "asyncio"):
            r = ratio("w5", b, "upstream")
            cs.append(cell(r, None if r is None else r <= 0.1))
        rows.append(f"| W5 ≥10x faster than upstream (ratio ≤ 0.10) | {cs[0]} | {cs[1]} |")
    if "w6" in workloads:
        cs = []
        for b in ("trio", "asyncio"):
            r = ratio("w6", b, "openai")
            cs.append("—" if r is None else f"{r:.3f} (no target)")
        rows.append(f"| W6 client CPU per token, ours ÷ openai client (informational) | {cs[0]} | {cs[1]} |")
    return rows


def render_w6(get: Any) -> list[str]:
    """The W6 table: ours vs the official ``openai`` client (reference: openai client) on the same stream."""
    w6cols = [("ours", "trio"), ("ours", "asyncio"), ("openai", "trio"), ("openai", "asyncio")]
    res = {c: get("w6", *c) for c in w6cols}
    head = [
        "workload",
        "tokens",
        "unit",
        *[f"{i} [{b}]" for i, b in w6cols],
        "ours/openai trio",
        "ours/openai asyncio",
    ]
    sizes = sorted({r["size"] for r in res.values() if r}, reverse=True)
    version = next((r["openai_version"] for r in res.values() if r and r.get("openai_version")), None)
    ref_cells = [
        fmt_ratio(res[("ours", b)], res[("openai", b)] or res[("openai", "asyncio")])
        for b in ("trio", "asyncio")
    ]
    return [
        "W6 SSE parsing (reference: openai client"
        + (f" `openai=={version}`" if version else "")
        + "): client-process CPU time per streamed token while reading one long OpenAI Chat Completions "
        "stream (one `chat.completion.chunk` event per token) from a local server in another process; "
        "ours is `openai_agent` consumed token by token through `replies.promises()`, the reference is "
        "`AsyncOpenAI(...).chat.completions.create(stream=True)` reading every chunk's `delta.content`. "
        "Ratio below 1: ours is cheaper.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        "| "
        + " | ".join(
            [
                WORKLOAD_TITLES["w6"],
                ", ".join(f"{n:,}" for n in sizes),
                UNITS["w6"],
                *[fmt_cost("w6", res[c]) for c in w6cols],
                *ref_cells,
            ]
        )
        + " |",
    ]


def chart(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {
        ("ours", "trio"): ("tab:blue", "o-"),
        ("ours", "asyncio"): ("tab:cyan", "s-"),
        ("floor", "trio"): ("tab:green", "o--"),
        ("floor", "asyncio"): ("tab:olive", "s--"),
        ("upstream", "asyncio"): ("tab:red", "^-"),
    }
    for (impl, backend), (color, style) in styles.items():
        pts = sorted(
            (r["size"], r)
            for r in results
            if (r["workload"], r["impl"], r["backend"]) == ("w3", impl, backend)
        )
        if not pts:
            continue
        xs = [n for n, _ in pts]
        ax_t.plot(xs, [per_unit(r) * 1e6 for _, r in pts], style, color=color, label=f"{impl} [{backend}]")
        ax_m.plot(
            xs,
            [statistics.median(r["rss_per_unit"]) / 1024 for _, r in pts],
            style,
            color=color,
            label=f"{impl} [{backend}]",
        )
    for ax, title, unit in (
        (ax_t, "W3 fan-out: CPU time per call", "µs / call"),
        (ax_m, "W3 fan-out: peak RSS growth per call", "KiB / call"),
    ):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}" if str(v)[0] in "25" else ""))
        ax.set_xlabel("N concurrent inquiries")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


DOC_TEMPLATE = """# Benchmarks

Side-by-side measurements of this project's runtime ("ours", on both anyio backends) against upstream
[`miniagents==0.0.35`](https://pypi.org/project/miniagents/0.0.35/) (asyncio + pydantic) and against a
"floor": the same workloads written directly with anyio tasks and memory object streams, no framework.
The code is in `benchmarks/` (issue #5).

## How to reproduce

```console
nox -s bench                 # full run: ~7.5 min of CPU (2 cores); rewrites this file and the chart
nox -s bench -- --quick      # smoke run with reduced sizes (~1-2 minutes); does not touch docs/
python benchmarks/run.py --help
```

The first run creates upstream's virtualenv in `benchmarks/.cache/upstream-venv-0.0.35` (pip, from PyPI);
set `BENCH_UPSTREAM_PYTHON` to reuse an interpreter that already has `miniagents==0.0.35`. Raw results are
written to `benchmarks/.cache/results-*.json`.

## Latest results

Generated {date}{quick_note}.

{table}

![W3 per-call cost and memory vs N](benchmarks-w3.png)

## What is measured

Every implementation does the same work and the harness checks it: each workload returns the number of
units it observed (replies, messages, tokens) and the run fails unless it equals the expected count.
Each (workload, implementation, backend) runs in its own subprocess: ours and upstream share the import
name `miniagents`, and the harness checks which package each process imported. Timed regions include
entering and leaving the framework's context, so work deferred to background tasks is counted.

- **W1 sequential calls**: 10,000 x (inquire an echo agent with one message, await its reply).
- **W2 message pipeline**: 100,000 messages through a chain of 5 forwarding agents (each agent iterates its
  input and replies every message); µs per message end to end.
- **W3 fan-out scale**: N concurrent inquiries of an echo agent (all N started before any is awaited) for
  N = 1k, 10k, 100k; µs per call and peak RSS per call (`ru_maxrss` at the end of the run minus RSS just
  before it, ÷ N, each repetition in a fresh process).
- **W4 token streaming**: one message of 1,000,000 tokens streamed by a producer agent through 5 forwarding
  agents to a consumer that reads every token. Forwarders pass each message on as soon as it starts
  (`ctx.reply(message_promise)`), so tokens stream live end to end. The producer yields to the scheduler every
  1,024 tokens in every implementation.
- **W4r** (extra): the same with forwarders that *re-stream*: each reads every token and writes it into its
  own streamed reply, so every token crosses 6 token-level hops (this is what an adapter or a filter agent
  costs per token).
- **W5 replay**: one call replies 10,000 messages; once the sequence is complete, 100 late consumers iterate
  it concurrently; µs per message per consumer (only the replay is timed).
- **W6 SSE parsing** (reference: openai client): one OpenAI Chat Completions stream of 20,000 tokens (one
  `chat.completion.chunk` event per token, then the finish and usage chunks and `[DONE]`) read by ours
  (`openai_agent.inquire(..., base_url=...)`, every token consumed through `replies.promises()`) and by the
  official `openai` client (`AsyncOpenAI(base_url=...)`, `chat.completions.create(stream=True)`, every chunk's
  `delta.content` read), both on trio and asyncio; µs of client-process CPU per token. The stream is rendered
  by `miniagents.testing.fake_llm_server.openai_stream` and served pre-rendered (chunked transfer encoding,
  one HTTP chunk per event) by `benchmarks/w6_server.py` in a separate process, so the server's cost is not
  counted and does not pace the client. The `openai` client (pinned, with `trio`) lives in its own virtualenv
  `benchmarks/.cache/openai-venv-<version>` (or `BENCH_OPENAI_PYTHON`); the project's dependencies are untouched.

Upstream's agents are written the way its documentation does it (`@miniagent`, `ctx.reply`,
`ctx.message_promises`, `agent.trigger(...)` — upstream's name for `inquire` — and
`MessageTokenAppender` for token streams); its default `MiniAgents()` settings are used.

The floor has the same shape as an agent runtime — one task per call, an input and a reply memory object
stream per call (unbounded, written with `send_nowait`), streamed messages as streams of tokens — with plain
`str` payloads and no message classes. Its receivers drain what is buffered with `receive_nowait()` and only
await when the buffer is empty; `BENCH_FLOOR_NAIVE=1` / `--impls floor-naive` runs the `async for item in
stream` variant (one scheduler checkpoint per item) for reference. For W5 each late consumer gets its own
stream refilled from the recorded log.

Timings are the CPU time of the benchmark process (`time.process_time`) over the measured region: the
workloads are CPU-bound and never wait for I/O, so on an idle machine this equals wall time, and it is not
inflated when other processes compete for the 2 cores (wall times are kept in the raw JSON).
{extra}
"""


DOC_EXTRA = """
## Caveats

- Upstream is run at reduced sizes where marked †: at full size it alone would take well over the 10-minute
  budget. W3 at N = 100,000 was measured once outside the standard run: 385.6 s of CPU (3.86 ms per call,
  2.2x its per-call cost at N = 1,000) and 49.3 KiB of peak RSS per call (about 4.9 GB in total).
- The numbers come from a shared 2-core machine: even CPU time moves by 10-20 % between runs when other
  processes load the cores (caches and SMT siblings are shared), so compare ratios within one run, and treat
  differences below ~20 % as noise.
- The floor is the *careful* anyio version (drain with `receive_nowait()`, await only when empty). Written
  the obvious way (`async for item in receive_stream`, one scheduler checkpoint per item: `--impls
  floor-naive`), the same workloads cost far more: in a `--quick` run W2 took 38-48 µs per message instead
  of ~5, and W4 reached 87,000-139,000 tokens/s instead of ~1,000,000.
- W6 runs 20,000 tokens rather than 100,000 to stay in the 10-minute budget (the `openai` client needs
  ~250 µs of CPU per token on the 2-core machine); the per-token cost of both clients was measured flat from
  10,000 to 100,000 tokens. Both clients sit on httpx/h11, so most of the per-token cost of either is HTTP
  chunk framing plus SSE and JSON parsing, and for the `openai` client building a pydantic chunk object.
"""


#: Everything after this line of docs/benchmarks.md is written by hand (persistence, rate limits, tracing) and
#: kept when the generated part above it is rewritten.
HAND_WRITTEN_MARKER = "<!-- hand-written sections below: kept when benchmarks/run.py rewrites this file -->"


def write_docs(table: str, quick: bool, extra: str) -> Path:
    DOCS.mkdir(parents=True, exist_ok=True)
    path = DOCS / "benchmarks.md"
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = DOC_TEMPLATE.format(
        date=date,
        table=table,
        quick_note=" by a `--quick` run (reduced sizes)" if quick else " by a full run",
        extra=extra,
    )
    old = path.read_text() if path.exists() else ""
    if HAND_WRITTEN_MARKER in old:
        text = text.rstrip("\n") + "\n\n" + HAND_WRITTEN_MARKER + old.split(HAND_WRITTEN_MARKER, 1)[1]
    path.write_text(text)
    return path


# --- main ---------------------------------------------------------------------------------------------


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="reduced sizes for a smoke run")
    p.add_argument("--only", default="w1,w2,w3,w4,w4r,w5,w6", help="comma-separated workloads")
    p.add_argument(
        "--impls",
        default="ours,floor,upstream,openai",
        help="comma-separated: ours, floor, upstream, openai (W6 only), floor-naive",
    )
    p.add_argument("--reps", type=int, default=None, help="override repetitions per workload")
    p.add_argument(
        "--write-docs",
        choices=["auto", "yes", "no"],
        default="auto",
        help="rewrite docs/benchmarks.md and the chart (auto: only after a full, complete run without failures)",
    )
    p.add_argument("--timeout", type=float, default=900, help="seconds per subprocess")
    p.add_argument("--from-json", type=Path, help="re-render the table (and docs) from a raw results file")
    return p.parse_args(list(argv) if argv is not None else None)


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.reps:
        plan.reps = args.reps
        plan.w3_reps = {n: args.reps for n in plan.w3}
    workloads = [w.strip() for w in args.only.split(",") if w.strip()]
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    columns = [c for c in COLUMNS if c[0] in impls]
    if "floor-naive" in impls:
        columns += [("floor-naive", "trio"), ("floor-naive", "asyncio")]

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.from_json:
        data = json.loads(args.from_json.read_text())
        plan = QUICK if data.get("quick") else FULL
        table = render(data["results"], plan, data["facts"], data["elapsed"], bool(data.get("quick")))
        print(table)
        if args.write_docs == "yes":
            chart(data["results"], DOCS / "benchmarks-w3.png")
            print(f"wrote {write_docs(table, bool(data.get('quick')), DOC_EXTRA)}")
        return 0

    t0 = time.perf_counter()
    facts = machine_facts()
    jobs = build_jobs(plan, workloads, columns)
    pythons = {"ours": sys.executable, "floor": sys.executable, "floor-naive": sys.executable}
    if any(j.impl == "upstream" for j in jobs):
        pythons["upstream"] = upstream_python(log)
    if any(j.impl == "openai" for j in jobs):
        pythons["openai"] = openai_python(log)
    w6_server: W6Server | None = None
    w6_sizes = [j.size for j in jobs if j.workload == "w6"] + [j.warmup for j in jobs if j.workload == "w6"]
    if w6_sizes:
        w6_server = W6Server(w6_sizes)
        os.environ["BENCH_W6_BASE_URL"] = w6_server.url  # inherited by the W6 jobs through _clean_env()
    try:
        results, failures = run_jobs(jobs, pythons, args.timeout, log)
    finally:
        if w6_server is not None:
            w6_server.close()

    elapsed = time.perf_counter() - t0
    facts["loadavg_end"] = os.getloadavg()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    facts["children_cpu"] = children.ru_utime + children.ru_stime
    CACHE.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    raw = CACHE / f"results-{stamp}{'-quick' if args.quick else ''}.json"
    raw.write_text(
        json.dumps(
            {
                "quick": args.quick,
                "facts": facts,
                "elapsed": elapsed,
                "results": results,
                "failures": failures,
            },
            indent=1,
        )
    )

    table = render(results, plan, facts, elapsed, args.quick)
    print(table)
    if failures:
        print("\nFAILED jobs:\n" + "\n".join(failures))
    print(f"\nraw results: {raw}")

    full_everything = (
        not args.quick
        and set(workloads) >= {"w1", "w2", "w3", "w4", "w5"}
        and ({"ours", "floor", "upstream"} <= set(impls))
    )
    write = args.write_docs == "yes" or (args.write_docs == "auto" and full_everything and not failures)
    if write and results:
        if any(r["workload"] == "w3" for r in results):
            chart(results, DOCS / "benchmarks-w3.png")
        path = write_docs(table, args.quick, DOC_EXTRA)
        print(f"wrote {path} and {DOCS / 'benchmarks-w3.png'}")
    return 1 if failures else 0


def run_jobs(
    jobs: list[Job], pythons: dict[str, str], timeout: float, log: Any
) -> tuple[list[dict[str, Any]], list[str]]:
    order = schedule(jobs)
    runs: dict[int, list[dict[str, Any]]] = {id(j): [] for j in jobs}
    failed: dict[int, str] = {}
    for k, (job, rep) in enumerate(order, 1):
        label = f"[{k}/{len(order)}] {job.workload} {job.impl}[{job.backend}] size={job.size:,} rep {rep + 1}"
        if id(job) in failed:
            continue
        t = time.perf_counter()
        try:
            res = run_once(job, pythons, timeout)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            failed[id(job)] = f"{label}: {exc}"
            log(f"{label}: FAILED\n{exc}")
            continue
        runs[id(job)].append(res)
        unit = res["times"][0] / (job.size * (job.consumers or 1))
        log(f"{label}: {unit * 1e6:,.3f} µs/unit ({time.perf_counter() - t:.1f} s)")
    results = [summarize(j, runs[id(j)]) for j in jobs if runs[id(j)] and id(j) not in failed]
    failures = list(failed.values())
    return results, failures


if __name__ == "__main__":
    sys.exit(main())
