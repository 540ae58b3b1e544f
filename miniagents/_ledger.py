"""The error ledger: failures that happened in a context, so that none is lost.

A failure is tracked per exception object from the moment a buffer fails with it until a consumer has it
raised; what is still open when the ``MiniAgents`` block exits is raised there (or collected earlier with
``MiniAgents.take_unobserved_errors``).

Frames: an open failure must not keep its call alive (its traceback holds the agent's frames, which hold the
call, its messages and whatever else the agent had in hand; in a context that lives as long as a service that
adds up).  So the ledger keeps a frame-free report of the failure (type, message, notes, the whole chain and
its formatted stack, via :class:`traceback.TracebackException` without source lines) and takes the
tracebacks off the exception chain.  The buffer that failed keeps them and puts them back on when it raises
the error to a consumer, so an observed error looks exactly as it was raised.  An error raised at exit, or
collected, carries its report as a note instead.
"""

from __future__ import annotations

import time
import traceback
from types import TracebackType

#: Exceptions whose tracebacks were taken off (``(exception, traceback)`` pairs), to put back when raised.
Tracebacks = list[tuple[BaseException, TracebackType]]

#: How many of the innermost stack entries a report keeps (per exception of the chain).
_REPORT_FRAMES = 100

_REPORT_NOTE = (
    "miniagents: the failure, as it was raised (its frames were released while nobody observed it):"
)


class ErrorLedger:
    """Failures that happened in a context, so that none is lost: raised at exit unless observed.

    Tracked per exception object.  A failure opens an entry; a consumer that has the error raised closes it;
    a *new* failure with the same object (an agent that let an error from its input propagate) opens it
    again, because that agent's consumers have not seen it yet.  Errors merely passed on by pumps (a call's
    input forwarding a failed sequence) are not new failures.
    """

    __slots__ = ("_last_observed", "_open", "_reports")

    def __init__(self) -> None:
        self._open: dict[int, BaseException] = {}
        self._reports: dict[int, tuple[float, traceback.TracebackException]] = {}
        # The report of the error observed last: an agent that lets the error it just had raised propagate
        # records the same error again, and its report (where it was first raised) is reused, not rebuilt
        # from a traceback that grows with every level of a deep chain.  (The error itself, not its id: an id
        # may be reused once its object is gone.)
        self._last_observed: tuple[BaseException, tuple[float, traceback.TracebackException]] | None = None

    def record(self, error: BaseException) -> Tracebacks:
        """A buffer failed with *error*: it counts until a consumer has it raised.

        Returns the tracebacks taken off its chain (see the module docstring): the failed buffer keeps them.
        """
        key = id(error)
        self._open.pop(key, None)
        self._open[key] = error  # re-inserted: errors are reported in the order of their last failure
        if key not in self._reports:
            last = self._last_observed
            if last is not None and last[0] is error:
                self._reports[key] = last[1]
            else:
                report = traceback.TracebackException.from_exception(
                    error, limit=-_REPORT_FRAMES, lookup_lines=False
                )
                self._reports[key] = (time.monotonic(), report)
        return release_frames(error)

    def release(self, error: BaseException) -> Tracebacks:
        """Take the tracebacks off *error* again if it is open (it was raised in a pump meanwhile)."""
        return release_frames(error) if id(error) in self._open else []

    def observe(self, error: BaseException) -> None:
        """A consumer had *error* raised."""
        key = id(error)
        if self._open.pop(key, None) is not None:
            report = self._reports.pop(key, None)
            if report is not None:
                self._last_observed = (error, report)

    def is_open(self, error: BaseException) -> bool:
        """Whether *error* failed something and no consumer has had it raised since."""
        return id(error) in self._open

    def record_error(self, error: BaseException) -> None:
        """Remember an error nobody can observe (e.g. from a persistence handler)."""
        self.record(error)

    def unobserved(self) -> list[BaseException]:
        """Errors not observed since their last failure, in the order of those failures."""
        return list(self._open.values())

    def take(self, older_than: float) -> list[BaseException]:
        """Remove and return the errors open for at least *older_than* seconds, each with its report note."""
        deadline = time.monotonic() - older_than
        taken = []
        for key, error in list(self._open.items()):
            recorded = self._reports.get(key)
            if recorded is None or recorded[0] <= deadline:
                del self._open[key]
                self._reports.pop(key, None)
                _add_report(error, recorded)
                taken.append(error)
        return taken

    def add_reports(self, errors: list[BaseException]) -> None:
        """Give each of *errors* whose frames were released its report, as a note (before raising it)."""
        for error in errors:
            _add_report(error, self._reports.get(id(error)))


def release_frames(error: BaseException) -> Tracebacks:
    """Take the tracebacks off *error* and every exception chained to it (or grouped in it); return them."""
    taken: Tracebacks = []
    seen: set[int] = set()
    stack = [error]
    while stack:
        exc = stack.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        tb = exc.__traceback__
        if tb is not None:
            taken.append((exc, tb))
            exc.__traceback__ = None
        for chained in (exc.__cause__, exc.__context__):
            if chained is not None:
                stack.append(chained)
        stack.extend(getattr(exc, "exceptions", ()))
    return taken


def restore_frames(tracebacks: Tracebacks) -> None:
    """Put back tracebacks taken by :func:`release_frames` (where nothing newer was set meanwhile)."""
    for exc, tb in tracebacks:
        if exc.__traceback__ is None:
            exc.__traceback__ = tb


def _add_report(error: BaseException, recorded: tuple[float, traceback.TracebackException] | None) -> None:
    if recorded is None or error.__traceback__ is not None:
        return  # its frames are still there: Python prints them
    add_note(error, _REPORT_NOTE + "\n" + "".join(recorded[1].format()).rstrip())


def add_note(error: BaseException, note: str) -> None:
    """Add *note* to *error* unless it has it already (``__notes__`` also on Python 3.10)."""
    notes = getattr(error, "__notes__", None)
    if notes and note in notes:
        return
    if hasattr(error, "add_note"):
        error.add_note(note)
    else:  # pragma: no cover - Python 3.10
        error.__notes__ = [*(notes or ()), note]  # type: ignore[attr-defined]
