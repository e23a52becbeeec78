"""The study scripts run as a user would, a two-node Ray cluster, and waits woken by the kernel (not timers)."""

from __future__ import annotations

import ctypes
import os
import select
import signal
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
RAY = str(Path(sys.executable).with_name("ray"))


def study_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(PYTHONUNBUFFERED="1", RAY_DEDUP_LOGS="0", **extra)
    return env


def run_script(script: str, *args: str, timeout: int = 600, env: dict[str, str] | None = None,
               check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([PYTHON, str(REPO / "studies" / script), *args], cwd=REPO, env=env or study_env(),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} exited {proc.returncode}\n--- stderr tail:\n"
                             f"{proc.stderr[-4000:]}\n--- stdout tail:\n{proc.stdout[-4000:]}")
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TwoNodeCluster:
    """`ray start --head` plus one more `ray start --address`, 1 CPU each, token auth with a fresh token."""

    def __init__(self):
        # Ray's socket paths must stay under 107 bytes: a short temp dir, not pytest's deep tmp_path.
        self.tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard = f"http://127.0.0.1:{free_port()}"  # where `ray job submit` sends jobs
        self.env = study_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
                             RAY_TMPDIR=self.tmp)
        self.sessions: list[int] = []  # the session ids of this cluster's `ray start` processes

    def _ray(self, *args: str, timeout: int = 120) -> None:
        # each `ray start` in a session of its own: the node's daemons (and the workers they start) stay in it, so
        # the teardown ends exactly the processes this cluster started (end_session), by PID
        proc = subprocess.Popen([RAY, *args], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        self.sessions.append(proc.pid)
        stdout, stderr = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"ray {' '.join(args)} failed:\n{stdout[-2000:]}\n{stderr[-2000:]}")

    def __enter__(self) -> "TwoNodeCluster":
        self._ray("start", "--head", "--num-cpus", "1", "--port", str(self.port), "--node-ip-address", "127.0.0.1",
                  "--dashboard-host", "127.0.0.1", "--dashboard-port", self.dashboard.rsplit(":", 1)[1],
                  "--dashboard-agent-listen-port", str(free_port()), "--disable-usage-stats")
        try:
            # each node's dashboard agent (which runs submitted jobs) on its own port: the default 52365 is taken
            # by the other node, or by any other Ray instance on this machine
            # and its own temp dir, as a node of a real cluster has its own disk: with one shared session dir, each
            # node's runtime-env agent deletes a job's working_dir when that node stops using it, under the
            # job's driver running on the other node
            self._ray("start", "--address", self.address, "--num-cpus", "1", "--node-ip-address", "127.0.0.1",
                      "--dashboard-agent-listen-port", str(free_port()), "--temp-dir", os.path.join(self.tmp, "w"),
                      "--disable-usage-stats")
        except Exception:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        # Stop only this cluster's processes (the sessions its `ray start`s began), not every Ray instance on the
        # machine as `ray stop` would; the worker node first, as `ray stop` orders it.
        for sid in reversed(self.sessions):
            end_session(sid)
        shutil.rmtree(self.tmp, ignore_errors=True)


def session_members(sid: int) -> list[int]:
    """PIDs of the live processes of session `sid` (a process started with start_new_session=True heads its own)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:
            members.append(int(entry))
    return members


def end_session(sid: int, grace: float = 10, timeout: float = 60) -> None:
    """End every process of session `sid`, by PID: SIGTERM, then SIGKILL to what is left after `grace` seconds,
    and wait until none is left (grace 0: SIGKILL at once). Woken by each exit (wait_for_exit), not a timer."""
    started = time.monotonic()
    signalled: set[tuple[int, int]] = set()
    while members := session_members(sid):
        now = time.monotonic()
        if now - started > timeout:
            raise AssertionError(f"processes {members} of session {sid} outlived SIGKILL")
        term = now - started < grace
        sig = signal.SIGTERM if term else signal.SIGKILL
        for pid in members:
            if (pid, sig) not in signalled:
                signalled.add((pid, sig))
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        wait_for_exit(members, (started + (grace if term else timeout)) - now)


def wait_for_exit(pids: list[int], seconds: float) -> None:
    """Return as soon as one of `pids` has exited (or is gone already), or after `seconds`: each PID's pidfd
    becomes readable when the process ends (Linux >= 5.3)."""
    fds = []
    try:
        for pid in pids:
            try:
                fds.append(os.pidfd_open(pid))
            except ProcessLookupError:
                return
        select.select(fds, [], [], max(seconds, 0))
    finally:
        for fd in fds:
            os.close(fd)


def wait_for_line(proc: subprocess.Popen, predicate, timeout: float = 600, what: str = "") -> str:
    """The first line of `proc`'s stdout (a text pipe) for which predicate(line) holds, read as it arrives (the
    pipe wakes us); AssertionError if the output ends first or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([proc.stdout], [], [], remaining)
        if not ready:
            break
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"the output ended (exit {proc.wait()}) before {what or predicate}")
        if predicate(line):
            return line
    raise AssertionError(f"not within {timeout} s: {what or predicate}")


class FileEvents:
    """Waits for a condition on the files under a folder, woken by the kernel's file events (inotify) and by
    the exit of a watched process (its pidfd), never by a polling timer. Folders made later are watched as
    they appear; the condition is checked after every wake-up, so nothing written meanwhile is missed."""

    _MASK = 0x2 | 0x8 | 0x80 | 0x100 | 0x200  # IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE

    def __init__(self, root: Path):
        self.root = Path(root)
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._watched: set[str] = set()

    def __enter__(self) -> "FileEvents":
        return self

    def __exit__(self, *exc) -> None:
        os.close(self._fd)

    def _watch_tree(self) -> None:
        for folder, _, _ in os.walk(self.root):
            if folder not in self._watched and self._libc.inotify_add_watch(self._fd, os.fsencode(folder),
                                                                            self._MASK) >= 0:
                self._watched.add(folder)

    def wait(self, condition, *, proc: subprocess.Popen | None = None, timeout: float = 600, what: str = ""):
        """condition()'s first truthy value; AssertionError if `proc` ends first or after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        pidfd = os.pidfd_open(proc.pid) if proc is not None else None
        try:
            while True:
                self._watch_tree()
                value = condition()
                if value:
                    return value
                if proc is not None and proc.poll() is not None:
                    raise AssertionError(f"the process ended (exit {proc.returncode}) before {what or condition}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"not within {timeout} s: {what or condition}")
                select.select([self._fd] + ([pidfd] if pidfd is not None else []), [], [], remaining)
                try:
                    while os.read(self._fd, 65536):
                        pass
                except BlockingIOError:
                    pass
        finally:
            if pidfd is not None:
                os.close(pidfd)


def kill_study(proc: subprocess.Popen, timeout: float = 60) -> None:
    """SIGKILL a study driver started with start_new_session=True and every process of its session (Ray's
    workers run in their own process groups, so killpg alone leaves them training for a few seconds), by PID,
    then wait until none is left."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    end_session(proc.pid, grace=0, timeout=timeout)
