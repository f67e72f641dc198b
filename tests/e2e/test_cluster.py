"""Governed queries on a Ballista cluster of real processes (DESIGN.md
section 7): `veil scheduler`, `veil executor` holding the key `veil
cluster-key` wrote, and `veil serve --cluster`, queried with the Python ADBC
driver next to a server that runs everything itself."""

import os
import subprocess
import time
import urllib.request

import adbc_driver_manager
import pytest

from conftest import ROOT, _binary, _free_port, start_server, start_veil, stop_server
from helpers import connect, rows

QUERIES = [
    "SELECT employee_id, name, email, ssn, salary, region FROM hr.employees ORDER BY employee_id LIMIT 20",
    "SELECT region, department, count(*), sum(salary), min(name) FROM hr.employees GROUP BY region, department ORDER BY region, department",
    "SELECT e.region, count(*), sum(t.amount) FROM sales.transactions t JOIN payments.cards c ON t.card_id = c.card_id "
    "JOIN hr.employees e ON c.employee_id = e.employee_id GROUP BY e.region ORDER BY e.region",
    "SELECT c.card_number, e.name FROM payments.cards c JOIN hr.employees e ON c.employee_id = e.employee_id ORDER BY c.card_id LIMIT 10",
]


PROJECT = "adbc.flight.sql.rpc.call_header.x-veil-project"


def _stopped(proc):
    proc.terminate()
    assert proc.wait(timeout=30) == 0, "must shut down cleanly on SIGTERM"


@pytest.fixture
def cluster(tmp_path):
    """A scheduler and one executor; yields (scheduler URL, environment with
    the master key, a function that starts an executor with a key)."""
    env = {"VEIL_MASTER_KEY": os.urandom(32).hex()}
    port = _free_port()
    scheduler = start_veil(["scheduler", "--listen", f"127.0.0.1:{port}"], env, "Ballista scheduler")
    procs = [scheduler]

    def executor(key_args, key_env=None, extra_env=None):
        proc = start_veil(
            [
                "executor",
                "--scheduler",
                f"df://127.0.0.1:{port}",
                "--listen",
                f"127.0.0.1:{_free_port()}",
                "--grpc-port",
                str(_free_port()),
                "--concurrent-tasks",
                "2",
                *key_args,
            ],
            {**(key_env or {}), **(extra_env or {})},
            "Ballista executor",
        )
        procs.append(proc)
        # Registered with the scheduler at start-up.
        time.sleep(1)
        return proc

    try:
        yield f"df://127.0.0.1:{port}", env, executor
    finally:
        for proc in reversed(procs):
            _stopped(proc)


def _cluster_key(tmp_path, env):
    """`veil cluster-key --out` of the front end at tmp_path/front: the file."""
    key_file = tmp_path / "cluster.key"
    out = subprocess.run(
        [str(_binary()), "--data-dir", str(tmp_path / "front"), "cluster-key", "--out", str(key_file)],
        cwd=ROOT,
        env={**os.environ, **env, "VEIL_ADMIN_PASSWORD": "admin-pw"},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    return key_file


def _ran_on_cluster(metrics_port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
    for line in text.splitlines():
        if line.startswith('veil_cluster_queries_total{ran="cluster"}'):
            return int(float(line.split()[-1]))
    return 0


def test_a_cluster_answers_what_one_server_answers(tmp_path, cluster):
    url, env, executor = cluster
    key_file = _cluster_key(tmp_path, env)
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    executor(["--cluster-key-file", str(key_file)])
    metrics = _free_port()
    front, front_uri = start_server(
        str(tmp_path / "front"), env=env, serve_args=("--cluster", url, "--metrics-listen", f"127.0.0.1:{metrics}")
    )
    alone, alone_uri = start_server(str(tmp_path / "alone"), env=env)
    try:
        for user in ["alice", "bob", "carol"]:
            with connect(front_uri, user) as there, connect(alone_uri, user) as here:
                for sql in QUERIES:
                    assert rows(there, sql) == rows(here, sql), f"{user}: {sql}"
                # A prepared statement with a parameter runs there too.
                sql = "SELECT count(*), min(name) FROM hr.employees WHERE department = ?"
                assert rows(there, sql, ("hr",)) == rows(here, sql, ("hr",))
        assert _ran_on_cluster(metrics) == 3 * (len(QUERIES) + 1)
        with connect(front_uri, "bob") as bob:
            got = rows(bob, "SELECT name, ssn, region FROM hr.employees ORDER BY employee_id LIMIT 5")
        assert all(len(name) == 32 and ssn is None and region == "US" for name, ssn, region in got)
    finally:
        stop_server(alone)
        stop_server(front)


def test_an_executor_without_the_key_computes_no_token(tmp_path, cluster):
    url, env, executor = cluster
    executor([], {"VEIL_CLUSTER_KEY": os.urandom(32).hex()})
    front, uri = start_server(str(tmp_path / "front"), env=env, serve_args=("--cluster", url))
    try:
        with connect(uri, "bob") as bob, connect(uri, "alice") as alice:
            names = {n for (n,) in rows(alice, "SELECT name FROM hr.employees")}
            with pytest.raises(adbc_driver_manager.Error) as refused:
                rows(bob, "SELECT name FROM hr.employees ORDER BY employee_id LIMIT 5")
            message = str(refused.value)
            assert "incident" in message, message
            assert "col:hr.employees" not in message and not any(n in message for n in names), message
            # Masks without a key still run there.
            got = rows(bob, "SELECT salary FROM hr.employees ORDER BY employee_id LIMIT 5")
            assert got and all(s % 10000 == 0 for (s,) in got)
    finally:
        stop_server(front)


def test_workspace_tables_on_s3_are_read_by_the_executors(tmp_path, cluster):
    """A warehouse on S3 (moto on loopback): executors open the bucket with
    their own AWS_* settings and read workspace tables and derived sources
    there; what the project member sees is what a server alone shows."""
    from test_workspaces import _moto

    url, env, executor = cluster
    moto, aws, _s3 = _moto()
    front = None
    try:
        key_file = _cluster_key(tmp_path, env)
        executor(["--cluster-key-file", str(key_file)], extra_env=aws)
        metrics = _free_port()
        front, uri = start_server(
            str(tmp_path / "front"),
            env={**env, **aws},
            args=["--warehouse", "s3://veil/warehouse"],
            serve_args=("--cluster", url, "--metrics-listen", f"127.0.0.1:{metrics}"),
        )
        with connect(uri, "sally") as s:
            for sql in [
                "CREATE PROJECT lake",
                "ALTER PROJECT lake ADD DATA SOURCE hr.employees",
                "ALTER PROJECT lake ADD MEMBER bob",
            ]:
                rows(s, sql)
        with connect(uri, "bob", **{PROJECT: "lake"}) as b:
            with b.cursor() as cur:
                cur.execute("CREATE TABLE workspace.emp AS SELECT employee_id, email, region FROM hr.employees")
            before = _ran_on_cluster(metrics)
            # What bob wrote: his US rows, e-mails hashed.
            assert rows(b, "SELECT count(*), count(DISTINCT region), max(region) FROM workspace.emp") == [(311, 1, "US")]
            assert rows(b, "SELECT count(*) FROM workspace.emp WHERE email LIKE '%@%'") == [(0,)]
            assert _ran_on_cluster(metrics) == before + 2
        with connect(uri, "sally", **{PROJECT: "lake"}) as s:
            rows(s, "CREATE DERIVED DATA SOURCE analytics.lake_emp FROM WORKSPACE TABLE emp")
        with connect(uri, "bob") as b:
            assert rows(b, "SELECT count(*) FROM analytics.lake_emp") == [(311,)]
        assert _ran_on_cluster(metrics) == before + 3
    finally:
        if front is not None:
            stop_server(front)
        moto.terminate()
        moto.wait(timeout=30)
