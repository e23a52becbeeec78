"""Ray Train's controller log, made truthful: its harmless placement-group cleaner timeout becomes one line
(OverloadedCleanerLine), installed in the controller actor by a Train callback of ours."""

from __future__ import annotations

import logging


CLEANER_LOGGER = "ray.train.v2._internal.callbacks.placement_group_callback"
CLEANER_STOP_FAILED = "Failed to stop PlacementGroupCleaner gracefully."
OVERLOADED_CLEANER = ("Ray Train's placement-group cleaner did not confirm its stop in time: the machine is "
                      "overloaded (the cleaner was waiting on Ray's state API). Harmless: the trial and its results "
                      "are unaffected, and the cleaner exits by itself.")


class OverloadedCleanerLine(logging.Filter):
    """Turns Ray Train's harmless 'Failed to stop PlacementGroupCleaner gracefully' GetTimeoutError traceback
    into one line (OVERLOADED_CLEANER). Why it happens: when a run ends, the controller waits
    max(2, 2 * 1 + 10) = 12 s for the cleaner actor's stop(), and stop() itself joins the cleaner's monitor
    thread for those same 12 s while that thread may be inside a state-API call of up to 10 s; under CPU load
    the two race and the outer wait loses. Ray has no setting for that timeout."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage() == CLEANER_STOP_FAILED and record.exc_info:
            import ray.exceptions

            if isinstance(record.exc_info[1], ray.exceptions.GetTimeoutError):
                record.msg, record.args, record.exc_info, record.exc_text = OVERLOADED_CLEANER, (), None, None
                record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _controller_callbacks():
    """Train callbacks of ours: Train v2 runs a RunConfig's callbacks inside its controller actor, which is where
    the cleaner's traceback is logged; unpickling this one there installs OverloadedCleanerLine."""
    from ray.train.v2.api.callback import UserCallback

    class ControllerLogFilter(UserCallback):
        def __getstate__(self):
            return {"filter": True}

        def __setstate__(self, state):
            install_cleaner_filter()

    return [ControllerLogFilter()]


def install_cleaner_filter() -> None:
    """Install OverloadedCleanerLine on Ray Train's cleaner logger in this process (once)."""
    logger = logging.getLogger(CLEANER_LOGGER)
    if not any(isinstance(f, OverloadedCleanerLine) for f in logger.filters):
        logger.addFilter(OverloadedCleanerLine())
