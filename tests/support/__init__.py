"""What more than one test file uses, in one place: test files import from here, never from each other.

The process helpers (REPO, run_script, TwoNodeCluster, ...) are re-exported here; they need the standard library
only. The rest is imported from its own module, as each pulls in torch, pandas or the study machinery:
`studies` (study scripts as modules, trial records), `nets` (a tiny net and batch), `study_tables` (synthetic
study directories), `pickles` (hand-made pickles, the refused ones among them)."""

from .processes import (PYTHON, RAY, REPO, FileEvents, TwoNodeCluster, end_session, free_port, kill_study,
                        run_script, session_members, study_env, wait_for_exit, wait_for_line)

__all__ = ["PYTHON", "RAY", "REPO", "FileEvents", "TwoNodeCluster", "end_session", "free_port", "kill_study",
           "run_script", "session_members", "study_env", "wait_for_exit", "wait_for_line"]
