"""Ray's token authentication: a study started without the cluster's token says what to export."""

from __future__ import annotations

import pytest

from dpnp_ray.study.cluster import AUTH_HELP, _is_auth_failure

from .raytools import TwoNodeCluster, run_script, study_env


def test_auth_failures_are_recognised():
    from ray.exceptions import AuthenticationError

    assert _is_auth_failure(AuthenticationError("InvalidAuthToken: token mismatch"))
    assert _is_auth_failure(RuntimeError("Unauthenticated: missing auth token"))
    assert not _is_auth_failure(ConnectionError("connection refused"))
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


class ReadmeHead(TwoNodeCluster):
    """A head started as README's "On a cluster" does: no RAY_AUTH_* in the environment, HOME of its own."""

    def __init__(self, home: str):
        super().__init__()
        self.env = {k: v for k, v in self.env.items() if not k.startswith("RAY_AUTH")}
        self.env["HOME"] = home

    def __enter__(self) -> "ReadmeHead":
        self._ray("start", "--head", "--port", str(self.port), "--num-cpus", "1", "--node-ip-address", "127.0.0.1",
                  "--include-dashboard", "false", "--disable-usage-stats")
        return self


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_readme_cluster_commands_work_as_written(tmp_path):
    import subprocess

    from .raytools import RAY

    with ReadmeHead(str(tmp_path)) as head:
        token = subprocess.run([RAY, "get-auth-token"], env=head.env, capture_output=True, text=True,
                               timeout=60).stdout.strip()
        assert len(token) >= 32 and (tmp_path / ".ray" / "auth_token").read_text().strip() == token
        join = [RAY, "start", "--address", head.address, "--num-cpus", "1", "--node-ip-address", "127.0.0.1",
                "--disable-usage-stats"]
        refused = subprocess.run(join, env=head.env, capture_output=True, text=True, timeout=180)
        assert refused.returncode != 0 and "auth" in (refused.stdout + refused.stderr).lower()
        exported = {**head.env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
        joined = subprocess.run(join, env=exported, capture_output=True, text=True, timeout=180)
        assert joined.returncode == 0, joined.stdout[-2000:] + joined.stderr[-2000:]
