"""A trial's end mark: hidden from the driver's console, and the wait for it returns once it arrived."""

from __future__ import annotations

import threading

import pytest

from dpnp_ray import trial_output
from dpnp_ray.trial_output import END_MARK, LineWriter, ended_label, take_end_marks, wait_for_end


def test_end_mark_lines_are_recognised_with_or_without_rays_prefix(capsys):
    LineWriter("s-full-s0")("test: clean 0.983")
    LineWriter("s-full-s0").end()
    written = capsys.readouterr().out.splitlines()
    assert written == ["[s-full-s0] test: clean 0.983", f"[s-full-s0] {END_MARK}"]
    assert ended_label(written[1]) == "s-full-s0" and ended_label(written[0]) is None
    assert ended_label(f"(run_trial pid=7) [s-pgd_at-s0] {END_MARK}") == "s-pgd_at-s0"
    assert ended_label(f"[s-x] {END_MARK} and more") is None  # only a whole mark line
    kept, ended = take_end_marks(["[a] epoch 0", f"[a] {END_MARK}", "[b] epoch 1", f"[b] {END_MARK}"])
    assert kept == ["[a] epoch 0", "[b] epoch 1"] and ended == ["a", "b"]


@pytest.fixture
def dispatcher(monkeypatch):
    """Ray's dispatcher of forwarded worker lines, with no handler (whatever this process did before)."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher

    monkeypatch.setattr(global_worker_stdstream_dispatcher, "handlers", [])
    monkeypatch.setattr(trial_output, "_ended", {})
    return global_worker_stdstream_dispatcher


@pytest.fixture
def fake_ray_printer(dispatcher):
    """Ray's handler of forwarded worker lines, as ray.init(log_to_driver=True) registers it, but collecting."""
    printed: list[list[str]] = []
    ended_while_printing: list[dict[str, int]] = []

    def printer(data):
        printed.append(list(data["lines"]))
        ended_while_printing.append(dict(trial_output._ended))

    dispatcher.add_handler("ray_print_logs", printer)
    dispatcher.ended_while_printing = ended_while_printing
    return dispatcher, printed


def test_watch_hides_end_marks_and_the_wait_returns_when_one_arrives(fake_ray_printer):
    dispatcher, printed = fake_ray_printer
    assert trial_output.watch() and trial_output.watch()  # twice: wrapped once
    assert sum(name == "ray_print_logs" for name, _ in dispatcher.handlers) == 1
    assert wait_for_end("s-full-s0", timeout_s=0.0) is False  # nothing arrived yet

    def worker_lines():
        dispatcher.emit({"lines": ["[s-full-s0] test: clean 0.983", f"[s-full-s0] {END_MARK}"], "pid": 7})

    sender = threading.Thread(target=worker_lines)
    sender.start()
    assert wait_for_end("s-full-s0", timeout_s=60.0)  # returns on the mark's arrival, long before the bound
    sender.join()
    assert printed == [["[s-full-s0] test: clean 0.983"]]
    # the mark counts only once the lines before it are printed: the waiting console then prints after them
    assert not dispatcher.ended_while_printing[0].get("s-full-s0")
    assert wait_for_end("s-full-s0", timeout_s=0.0) is False  # consumed: a second run waits for its own mark
    dispatcher.emit({"lines": [f"[s-pgd_at-s0] {END_MARK}"], "pid": 8})
    assert printed == [["[s-full-s0] test: clean 0.983"]]  # a batch of only marks prints nothing
    assert wait_for_end("s-pgd_at-s0", timeout_s=0.0)


def test_without_rays_printer_nothing_is_waited_for(dispatcher):
    assert trial_output.watch() is False
    assert wait_for_end("s-full-s0", timeout_s=60.0) is False  # at once: there is nothing to wait for
