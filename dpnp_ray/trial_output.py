"""A trial's console lines on their way to the study's driver, and a mark that says they all arrived.

A trial's lines reach the driver through Ray's log forwarding (worker log file -> the node's log
monitor -> the driver's printing thread), later than the trial's results reach Tune. So the driver
could print a trial's "completed" line, or the study's results block, before that trial's last
test lines. The trial's rank-0 loop therefore ends its output with an end mark (`LineWriter.end`); in the driver, `watch()` wraps Ray's printing handler so that end marks are recorded
instead of printed, and `wait_for_end` blocks (on a condition, bounded) until a trial's mark came.
Ray keeps the order of one worker's lines, so a mark means every earlier line was printed.
"""

from __future__ import annotations

import re
import sys
import threading
from typing import Any, Callable

END_MARK = "-- end of trial output --"
"""The last line a trial prints (after its run name), hidden from the driver's console by `watch`."""

_END_LINE = re.compile(r"\[(?P<label>[^\]]+)\] " + re.escape(END_MARK) + r"\s*$")
_RAY_PRINTER = "ray_print_logs"  # the name ray._private.worker gives its handler of forwarded lines

_ended: dict[str, int] = {}
_arrived = threading.Condition()


class LineWriter:
    """Whole lines on the worker's stdout, prefixed with the trial's run name (<study>-<trial_id>).

    Not `print`: Ray Train patches it in workers to also log every line, so each one reached the
    driver twice (once from stdout, once from Train's console log handler).
    """

    def __init__(self, label: str):
        self.label = label

    def __call__(self, line: str) -> None:
        sys.stdout.write(f"[{self.label}] {line}\n")
        sys.stdout.flush()

    def end(self) -> None:
        """The trial's last line: the driver knows its output has all arrived when this one does."""
        self(END_MARK)


def ended_label(line: str) -> str | None:
    """The run name an end-mark line ends, else None (Ray may prefix the line with its worker tag)."""
    match = _END_LINE.search(line)
    return match.group("label") if match else None


def take_end_marks(lines: list[str]) -> tuple[list[str], list[str]]:
    """(the lines to print, the run names whose end marks were among them)."""
    kept, ended = [], []
    for line in lines:
        label = ended_label(line)
        if label is None:
            kept.append(line)
        else:
            ended.append(label)
    return kept, ended


def record_end(label: str) -> None:
    with _arrived:
        _ended[label] = _ended.get(label, 0) + 1
        _arrived.notify_all()


def _wrap(printer: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def print_without_end_marks(data: dict[str, Any]) -> None:
        kept, ended = take_end_marks(list(data.get("lines") or []))
        if kept or not ended:
            printer({**data, "lines": kept})
        for label in ended:  # after the lines before it are printed: a waiting console prints after them
            record_end(label)

    print_without_end_marks.wrapped = printer
    return print_without_end_marks


def _dispatcher():
    """Ray's dispatcher of the lines forwarded to this driver, or None if this Ray has none where expected."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher
    except ImportError:
        return None
    return global_worker_stdstream_dispatcher


def watching() -> bool:
    """Whether Ray's printer of forwarded lines is the wrapped one (`watch`): only then do end marks arrive."""
    dispatcher = _dispatcher()
    return dispatcher is not None and any(name == _RAY_PRINTER and hasattr(handler, "wrapped")
                                          for name, handler in dispatcher.handlers)


def watch() -> bool:
    """In the driver, after ray.init: record end marks instead of printing them. False when Ray does not
    forward the workers' lines here (log_to_driver off) or its handler is not where this expects it;
    `wait_for_end` then returns at once."""
    dispatcher = _dispatcher()
    if dispatcher is None:
        return False
    with dispatcher._lock:
        for index, (name, handler) in enumerate(dispatcher.handlers):
            if name == _RAY_PRINTER and not hasattr(handler, "wrapped"):
                dispatcher.handlers[index] = (name, _wrap(handler))
    return watching()


def wait_for_end(label: str, timeout_s: float) -> bool:
    """Block until the trial `label` (<study>-<trial_id>) printed its end mark, at most `timeout_s`; True when
    it did. A mark is consumed, so a trial run twice in one driver (a resume) waits for its new one."""
    if not watching():
        return False
    with _arrived:
        arrived = _arrived.wait_for(lambda: _ended.get(label, 0) > 0, timeout=timeout_s)
        if arrived:
            _ended[label] -= 1
        return arrived
