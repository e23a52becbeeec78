"""Ray's token authentication: a study started without the cluster's token says what to export."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dpnp_ray.study.cluster import AUTH_HELP, _is_auth_failure

from ..support import RAY, TwoNodeCluster, run_script, study_env


def test_auth_failures_are_recognised():
    from ray.exceptions import AuthenticationError

    assert _is_auth_failure(AuthenticationError("InvalidAuthToken: token mismatch"))
    assert _is_auth_failure(RuntimeError("Unauthenticated: missing auth token"))
    assert not _is_auth_failure(ConnectionError("connection refused"))
    try:  # what ray.init raises: a ConnectionError from the GCS client's Unauthenticated error
        try:
            raise RuntimeError("Failed to get cluster ID from GCS server: Unauthenticated: invalid token")
        except RuntimeError as inner:
            raise ConnectionError("Failed to connect to Ray cluster at 127.0.0.1:6379") from inner
    except ConnectionError as outer:
        assert _is_auth_failure(outer)
    assert "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=" in AUTH_HELP and "ray get-auth-token" in AUTH_HELP


class HeadOnly(TwoNodeCluster):
    """`ray start --head` with token authentication, no second node."""

    def __enter__(self) -> "HeadOnly":
        self._ray("start", "--head", "--num-cpus", "1", "--port", str(self.port), "--node-ip-address", "127.0.0.1",
                  "--include-dashboard", "false", "--disable-usage-stats")
        return self


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_study_without_the_token_says_what_to_export(tmp_path):
    with HeadOnly() as cluster:
        env = study_env(RAY_TMPDIR=cluster.env["RAY_TMPDIR"])  # neither RAY_AUTH_MODE nor RAY_AUTH_TOKEN
        env.pop("RAY_AUTH_MODE", None)
        env.pop("RAY_AUTH_TOKEN", None)
        env["HOME"] = str(tmp_path)  # and no ~/.ray/auth_token
        proc = run_script("ablation.py", "--smoke", "--address", cluster.address, "--storage", str(tmp_path / "r"),
                          env=env, check=False, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=" in proc.stderr and cluster.address in proc.stderr
    assert "token authentication and refused this process" in proc.stderr  # recognised, not guessed


class ReadmeCluster(TwoNodeCluster):
    """docs/cluster.md's cluster commands, in a HOME of their own and with no RAY_AUTH_* set beforehand."""

    def __init__(self, home: Path):
        super().__init__()
        self.env = {k: v for k, v in self.env.items() if not k.startswith("RAY_AUTH")}
        self.env["HOME"] = str(home)

    def __enter__(self) -> "ReadmeCluster":
        return self


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_readme_cluster_commands_work_as_written(tmp_path):
    (tmp_path / "head").mkdir()
    (tmp_path / "other").mkdir()
    with ReadmeCluster(tmp_path / "head") as cluster:
        # export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$(ray get-auth-token --generate)
        token = subprocess.run([RAY, "get-auth-token", "--generate"], env=cluster.env, capture_output=True, text=True,
                               timeout=120).stdout
        assert len(token) >= 32 and (tmp_path / "head" / ".ray" / "auth_token").read_text().strip() == token
        cluster.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
        # ray start --head --port 6379 (a free port; one CPU; loopback)
        cluster._ray("start", "--head", "--port", str(cluster.port), "--num-cpus", "1", "--node-ip-address",
                     "127.0.0.1", "--include-dashboard", "false", "--disable-usage-stats")
        join = [RAY, "start", "--address", cluster.address, "--num-cpus", "1", "--node-ip-address", "127.0.0.1",
                "--disable-usage-stats"]
        other = {**{k: v for k, v in cluster.env.items() if not k.startswith("RAY_AUTH")}, "HOME": str(tmp_path / "other")}
        refused = subprocess.run(join, env=other, capture_output=True, text=True, timeout=180)
        assert refused.returncode != 0 and "auth" in (refused.stdout + refused.stderr).lower()
        # on the other node: export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=<token>; ray start --address <head>:6379
        joined = subprocess.run(join, env={**other, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token},
                                capture_output=True, text=True, timeout=180)
        assert joined.returncode == 0, joined.stdout[-2000:] + joined.stderr[-2000:]
