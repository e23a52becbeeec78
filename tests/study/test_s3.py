"""End to end on object storage: the study scripts with `--storage s3://...` against a real S3-protocol server on
loopback (moto_server, started and stopped by these tests), as a user with an S3-compatible endpoint would run
them (AWS_ENDPOINT_URL). Every table is read back from the bucket, a driver is killed and resumed, an exported
model is re-evaluated from the bucket, and no credential reaches any object, local file or output."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from dpnp_ray import load_model, results, storage
from dpnp_ray.study.lock import LOCK_FILE, read_lock

from ..support import PYTHON, REPO, FileEvents, free_port, kill_study, run_script, study_env, wait_for_line

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

TINY = ["--smoke", "--set", "epochs=1", "eval_suite=basic", "eval_n=100", "train_attack_steps=2",
        "val_attack_steps=2", "eval_attack_steps=3"]
TABLES = ("trials", "epochs", "evals")  # what eval_suite=basic writes; any other table there is read too


class S3:
    """A moto_server on 127.0.0.1 with one bucket, the environment that points a study at it, and what the
    tests printed (to search for credentials)."""

    def __init__(self):
        # the study processes' TMPDIR (the local Optuna journal, Ray's session): short, for Ray's socket paths
        self.tmp = Path(tempfile.mkdtemp(prefix="s3", dir="/tmp"))
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.bucket = "dpnp-" + secrets.token_hex(4)
        # a secret with the characters that redaction has to get right
        self.secret = f"S3cr/{secrets.token_hex(8)}@x+{secrets.token_hex(4)}"
        self.env = study_env(AWS_ENDPOINT_URL=self.endpoint, AWS_ACCESS_KEY_ID="AKIA" + secrets.token_hex(8).upper(),
                             AWS_SECRET_ACCESS_KEY=self.secret, AWS_DEFAULT_REGION="us-east-1",
                             AWS_EC2_METADATA_DISABLED="true", TMPDIR=str(self.tmp))
        self.outputs: list[str] = []
        self.log = self.tmp / "moto_server.log"  # where it says it listens (and logs every request)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([str(Path(PYTHON).with_name("moto_server")), "-H", "127.0.0.1", "-p",
                                          str(self.port)], stdout=log, stderr=subprocess.STDOUT)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"])

    def wait_until_it_answers(self, limit_s: float = 60.0) -> None:
        """Until moto_server says it is running (woken by its log file's writes), then one request to be sure."""
        with FileEvents(self.tmp) as events:
            events.wait(lambda: b"Running on" in self.log.read_bytes(), proc=self.proc, timeout=limit_s,
                        what=f"moto_server listening on port {self.port}")
        self.client().list_buckets()

    def objects(self) -> dict[str, bytes]:
        client, found = self.client(), {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for item in page.get("Contents", []):
                found[item["Key"]] = client.get_object(Bucket=self.bucket, Key=item["Key"])["Body"].read()
        return found

    def run(self, script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = run_script(script, *args, env=self.env, check=check)
        self.outputs += [proc.stdout, proc.stderr]
        return proc

    def assert_no_credentials(self, *extra: str) -> None:
        """No object in the bucket, no file the studies wrote locally (Ray's session logs under <TMPDIR>/ray/
        included), no output holds the secret."""
        needles = [self.secret.encode(), *(s.encode() for s in extra)]
        sources = {f"s3://{self.bucket}/{k}": v for k, v in self.objects().items()}
        sources.update({str(p): p.read_bytes() for p in self.tmp.rglob("*")
                        if p.is_file() and not p.is_symlink()})
        sources.update({f"output {i}": text.encode() for i, text in enumerate(self.outputs)})
        leaks = [name for name, data in sources.items() if any(n in data for n in needles)]
        assert not leaks, f"credentials found in {leaks}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def s3():
    server = S3()
    saved = {k: os.environ.get(k) for k in server.env if k.startswith("AWS_")}
    try:
        server.wait_until_it_answers()
        server.client().create_bucket(Bucket=server.bucket)
        os.environ.update({k: server.env[k] for k in saved})  # this process reads the bucket back with pyarrow
        yield server
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


def _records(s3: S3, directory: str) -> list[str]:
    return storage.list_files(storage.join(directory, "trials"), ".json")


def test_ablation_on_s3_survives_a_killed_driver_and_its_models_reevaluate_from_the_bucket(s3):
    root = f"s3://{s3.bucket}/studies"
    directory = storage.join(root, "abl")
    args = [*TINY, "--variants", "full", "pgd_at", "--seeds", "0", "--max-concurrent", "1", "--storage", root,
            "--name", "abl"]

    # credentials in the URI are refused before anything runs, and the refusal does not repeat them
    uri_secret = "uri" + secrets.token_hex(8)
    refused = s3.run("ablation.py", *TINY, "--storage", f"s3://AKIAURI:{uri_secret}@{s3.bucket}/studies",
                     "--name", "cred", check=False)
    assert refused.returncode == 2 and "holds credentials" in refused.stderr and "Traceback" not in refused.stderr

    driver = subprocess.Popen([PYTHON, str(REPO / "studies" / "ablation.py"), *args], cwd=REPO, env=s3.env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    # the console's line for a finished trial comes after its record is in the bucket
    wait_for_line(driver, lambda line: line.startswith("trial ") and " completed " in line, what="a finished trial")
    kill_study(driver)  # the driver and everything it started
    assert _records(s3, directory)
    held = read_lock(storage.join(directory, LOCK_FILE))
    assert held is not None and held["pid"] == driver.pid  # the killed driver's lock is left behind ...

    before = {k: v for k, v in s3.objects().items()}
    other = s3.run("ablation.py", *TINY, "--variants", "full", "--seeds", "0", "1", "--storage", root,
                   "--name", "abl", check=False)  # another study into the same name, without --resume
    assert other.returncode == 2 and "--resume" in other.stderr and "--name" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1
    assert s3.objects() == before  # ... and nothing in the study changed

    s3.run("ablation.py", *args, "--resume")  # ... and does not block --resume: that driver is gone
    assert not storage.exists(storage.join(directory, LOCK_FILE))
    present = {name[: -len(".parquet")] for name in storage.list_names(directory, "") if name.endswith(".parquet")}
    assert present >= set(TABLES)
    tables = {name: results.read_table(directory, name) for name in present}
    trials = tables["trials"]
    assert sorted(trials["trial_id"]) == ["full-s0", "pgd_at-s0"] and (trials["status"] == "completed").all()
    assert not tables["epochs"].duplicated(["trial_id", "epoch"]).any() and len(tables["epochs"]) == 2
    assert set(tables["evals"]["trial_id"]) == {"full-s0", "pgd_at-s0"}
    assert storage.list_names(storage.join(directory, "best"), "")  # best configs in the bucket

    model = storage.join(directory, "models", "full-s0")
    assert load_model(model)(__import__("torch").zeros(2, 1, 8, 8)).shape == (2, 10)
    proc = subprocess.run([PYTHON, "-m", "dpnp_ray.evaluate", model, "--suite", "basic", "--device", "cpu",
                           "--set", "eval_n=60", "eval_attack_steps=3"], cwd=REPO, env=s3.env, capture_output=True,
                          text=True, timeout=600)
    s3.outputs += [proc.stdout, proc.stderr]
    assert proc.returncode == 0, proc.stderr[-3000:]
    evals = results.read_table(storage.join(directory, "evaluations", "full-s0"), "evals")  # beside the model
    assert results.read_table(model, "evals", required=False) is None
    clean = evals[evals["attack"] == "clean"]
    assert len(clean) == 1 and clean["n"].iloc[0] == 60 and clean["trial_id"].iloc[0] == "full-s0"
    s3.assert_no_credentials(uri_secret)


def test_search_on_s3_writes_every_table_and_its_journal_to_the_bucket(s3):
    root = f"s3://{s3.bucket}/studies"
    directory = storage.join(root, "srch")
    args = [*TINY, "--trials", "2", "--scheduler", "none", "--max-concurrent", "1", "--storage", root,
            "--name", "srch"]
    s3.run("search.py", *args)
    trials = results.read_table(directory, "trials")
    assert sorted(trials["trial_id"]) == ["optuna-0000", "optuna-0001"]
    pareto = results.read_table(directory, "pareto")
    assert 1 <= len(pareto) <= 2 and set(pareto["trial_id"]) <= set(trials["trial_id"])
    present = {name[: -len(".parquet")] for name in storage.list_names(directory, "") if name.endswith(".parquet")}
    assert present >= {*TABLES, "pareto"}
    for name in present - {"trials", "pareto"}:
        assert set(results.read_table(directory, name)["trial_id"]) == set(trials["trial_id"])
    assert storage.exists(storage.join(directory, "optuna.journal"))
    again = s3.run("search.py", *args, check=False)
    assert again.returncode == 2 and "this same search study" in again.stderr  # no silent second Optuna run
    s3.assert_no_credentials()
