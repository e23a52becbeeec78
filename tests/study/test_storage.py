"""Storage locations without Ray: the one redaction, the one URI-aware join, the driver lock, a study's identity."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dpnp_ray import results, storage
from dpnp_ray.provenance import SECRET_NAMES, redact
from dpnp_ray.study.lock import LOCK_FILE, acquire, read_lock
from dpnp_ray.study.study_file import STUDY_FILE
from dpnp_ray.study.settings import StudyError

from ..support import REPO
from ..support.studies import resolve

SECRET = "Zq9/x@y+Kt"  # holds '/', '@' and '+'


@pytest.mark.parametrize("text", [
    f"s3://AKIAEXAMPLE:{SECRET}@bucket/studies",
    f"s3://AKIAEXAMPLE:{SECRET}@bucket/studies?endpoint_override=127.0.0.1:9000&scheme=http",
    f"gs://user:{SECRET}@bucket/a/b",
    f"postgresql+psycopg2://optuna:{SECRET}@db.example:5432/optuna",
    f"error: cannot open 's3://k:{SECRET}@bucket/x': Access Denied",
    f"Authorization: Bearer {SECRET}",
    f"bearer {SECRET}",
    *[f"https://storage.example/o?part=1&{name}={SECRET}" for name in SECRET_NAMES],
    *[f"--set {name.upper()}={SECRET} more" for name in ("api_key", "token", "password", "session_token")],
])
def test_redact_removes_every_kind_of_secret(text):
    out = redact(text)
    assert SECRET not in out and "Zq9" not in out, out
    assert "***" in out


def test_redact_keeps_what_is_not_a_secret():
    uri = "s3://bucket/studies/s?endpoint_override=127.0.0.1:9000&scheme=http&region=eu-west-1"
    assert redact(uri) == uri
    assert redact("s3://bucket/user@example.com/x") == "s3://bucket/user@example.com/x"  # an '@' in a path
    assert redact("sort_key=3 monkey=2 keys=1") == "sort_key=3 monkey=2 keys=1"  # names match whole
    assert redact(f"s3://AKIA:{SECRET}@bucket/x?scheme=http") == "s3://***@bucket/x?scheme=http"
    home = os.path.expanduser("~")
    if home not in ("", "/"):
        assert redact(f"{home}/data") == "~/data"


def test_join_and_parent_keep_the_scheme_and_put_the_query_last():
    uri = "s3://bucket/studies?endpoint_override=127.0.0.1:9000&scheme=http"
    assert storage.join(uri, "s", "trials.parquet") == \
        "s3://bucket/studies/s/trials.parquet?endpoint_override=127.0.0.1:9000&scheme=http"
    assert storage.parent(storage.join(uri, "s", "trials.parquet")) == storage.join(uri, "s")
    assert storage.parent("s3://bucket/studies/s/trials.parquet") == "s3://bucket/studies/s"
    assert storage.join("/tmp/x/", "a", "b.json") == "/tmp/x/a/b.json"
    assert storage.parent("/tmp/x/a/b.json") == "/tmp/x/a"
    assert storage.join("/tmp/odd?name", "a") == "/tmp/odd?name/a"  # a local path has no query string


def test_a_storage_uri_pyarrow_cannot_open_is_one_line_without_its_secret():
    with pytest.raises(results.ResultsError) as caught:
        results.read_table(f"s3://bucket/x?secret_key={SECRET}&endpoint_override=h:1", "trials")
    message = str(caught.value)
    assert SECRET not in message and "\n" not in message and "secret_key=***" in message


@pytest.mark.parametrize("secret", ["Zq9xyKt", SECRET])  # one pyarrow parses, one it cannot ('/' unescaped)
def test_study_scripts_refuse_credentials_in_the_storage_uri_before_ray(tmp_path, secret):
    proc = subprocess.run([sys.executable, "studies/ablation.py", "--smoke", "--storage",
                           f"s3://AKIAEXAMPLE:{secret}@bucket/studies?endpoint_override=127.0.0.1:9&scheme=http",
                           "--name", "c"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), "AWS_EC2_METADATA_DISABLED": "true"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert secret not in proc.stderr + proc.stdout and "s3://***@bucket/studies" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 2


def test_lock_refuses_a_second_driver_and_takes_over_a_dead_ones(tmp_path):
    directory = str(tmp_path / "s")
    lock = acquire(directory)
    with pytest.raises(StudyError, match=rf"pid {os.getpid()}.*--name"):
        acquire(directory)
    lock.release()
    assert not storage.exists(storage.join(directory, LOCK_FILE))

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid now names no process (it was reaped)
    location = storage.join(directory, LOCK_FILE)
    acquire(directory).release()
    storage.write_bytes_atomic(location, ('{"host": "%s", "pid": %d}' % (os.uname().nodename, dead.pid)).encode())
    taken = acquire(directory)  # the killed driver's lock does not block
    assert read_lock(location)["pid"] == os.getpid()
    taken.release()

    storage.write_bytes_atomic(location, b'{"host": "elsewhere.example", "pid": 1}')
    with pytest.raises(StudyError, match=r"host elsewhere\.example.*remove .*driver\.lock"):
        acquire(directory)
    other = read_lock(location)
    lock = type(taken)(location, "not-its-token")
    lock.release()  # releasing a lock that is not ours leaves it
    assert read_lock(location) == other


def _snapshot(directory):
    return {p: p.stat().st_mtime_ns for p in directory.rglob("*")}


def test_another_study_into_a_used_name_is_refused_and_changes_nothing(ablation, tmp_path):
    recipe = resolve(ablation, "ablation", "--smoke", "--storage", str(tmp_path), "--name", "s")
    with recipe:
        recipe.record()
    before = _snapshot(tmp_path)
    with pytest.raises(StudyError) as caught:
        resolve(ablation, "ablation", "--smoke", "--epochs", "8", "--storage", str(tmp_path), "--name", "s")
    message = str(caught.value)
    assert "\n" not in message and "--resume" in message and "--name" in message and "config.epochs" in message
    with pytest.raises(StudyError, match="this same ablation study; continue it with --resume"):
        resolve(ablation, "ablation", "--smoke", "--storage", str(tmp_path), "--name", "s")
    assert _snapshot(tmp_path) == before
    # with --resume the recorded study is continued; growing it is allowed
    assert resolve(ablation, "ablation", "--resume", "--seeds", "0", "1", "--storage", str(tmp_path),
                   "--name", "s").grown == ("seeds",)


def test_resume_of_a_study_that_never_ran_is_refused_and_writes_nothing(ablation, tmp_path):
    with pytest.raises(StudyError, match="holds no recorded study .*drop --resume"):
        resolve(ablation, "ablation", "--smoke", "--resume", "--storage", str(tmp_path), "--name", "never")
    assert not list(tmp_path.iterdir())
    assert not (tmp_path / "never" / STUDY_FILE).exists()


def test_a_new_search_does_not_add_to_an_optuna_study_of_the_same_name(tmp_path):
    import optuna

    from dpnp_ray.study import SearchSpec, run_search
    from dpnp_ray.study.optuna_storage import make_storage
    from dpnp_ray.study.preflight import PreflightError
    from dpnp_ray.study.settings import StudySettings

    journal = str(tmp_path / "elsewhere.journal")
    optuna.create_study(study_name="s", storage=make_storage(journal))
    with pytest.raises(PreflightError, match="already holds a study of that name.*--resume.*--name"):
        run_search(SearchSpec({"dataset": "digits", "epochs": 1}, 1, optuna_storage=journal),
                   StudySettings(name="s", storage=str(tmp_path)))
    assert len(optuna.load_study(study_name="s", storage=make_storage(journal)).trials) == 0
