"""What a client may read of a failed task: one clean line; tracebacks and server paths stay in the logs."""

from __future__ import annotations

import re

MAX_CHARS = 300
_TRACEBACK = re.compile(r"Traceback \(most recent call last\).*", re.DOTALL)
_FRAME = re.compile(r'File "[^"]*", line \d+(, in \S+)?')
_SOURCE_PATH = re.compile(r"(?:[A-Za-z]:)?[\\/][^\s'\"]*\.(?:py|pyc|so)\b|[^\s'\"]*(?:site|dist)-packages[^\s'\"]*")


class TaskError(Exception):
    """A task failure whose message is written for the run's client (scrubbed all the same)."""


class FinalTaskError(TaskError):
    """A task failure another try cannot change (a cap the task's own input or output is over)."""


def scrub(text: str) -> str:
    """One line of at most MAX_CHARS, without tracebacks, stack frames or source file paths."""
    text = _TRACEBACK.sub("", text)
    text = _FRAME.sub("", text)
    text = _SOURCE_PATH.sub("<path>", text)
    line = " ".join(text.split())
    return line if len(line) <= MAX_CHARS else line[: MAX_CHARS - 1] + "…"


def public_message(exc: BaseException) -> str:
    """A task's exception as its client sees it: the message of a `TaskError`, else only the kind of error."""
    if isinstance(exc, TaskError):
        return scrub(f"{type(exc).__name__}: {exc}")
    return f"{type(exc).__name__}: unexpected error in the task (details are in the worker log)"
