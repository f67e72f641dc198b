"""Project workspaces end to end with the ADBC driver, on a local warehouse
and on a real S3-compatible server (moto, started here on loopback): CTAS,
INSERT, DROP, adbc_ingest in each mode, polars write_database, reading back
by another member, refusals outside the project and from another project,
derived data sources, and a SIGKILL in the middle of a large CTAS."""

import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time
import warnings

import adbc_driver_manager
import polars as pl
import pyarrow as pa
import pytest
from conftest import start_server, stop_server
from helpers import connect, rows, tables

warnings.filterwarnings("ignore", message="Cannot disable autocommit")

PROJECT = "adbc.flight.sql.rpc.call_header.x-veil-project"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _moto():
    """A moto S3 server on loopback with bucket `veil`; returns (process, env)."""
    import boto3

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    deadline = time.time() + 30
    while True:
        try:
            s3.create_bucket(Bucket="veil")
            break
        except Exception:
            if time.time() > deadline:
                proc.kill()
                raise
            time.sleep(0.2)
    return proc, env, s3


@pytest.fixture(scope="module", params=["local", "s3"])
def store(request, tmp_path_factory):
    """A server whose warehouse is a local directory, or an S3 bucket."""
    data_dir = str(tmp_path_factory.mktemp("ws"))
    if request.param == "local":
        proc, uri = start_server(data_dir)
        yield uri, None
        stop_server(proc)
        return
    moto, env, s3 = _moto()
    try:
        proc, uri = start_server(data_dir, args=["--warehouse", "s3://veil/warehouse"], env=env)
        yield uri, s3
        stop_server(proc)
    finally:
        moto.terminate()
        moto.wait(timeout=30)


def setup_project(uri, name):
    with connect(uri, "sally") as s:
        for sql in [
            f"CREATE PROJECT {name}",
            f"ALTER PROJECT {name} ADD DATA SOURCE hr.employees",
            f"ALTER PROJECT {name} ADD MEMBER bob",
        ]:
            rows(s, sql)


def in_project(uri, user, name):
    return connect(uri, user, **{PROJECT: name})


def test_write_read_and_isolation(store):
    uri, s3 = store
    setup_project(uri, "wsp")
    with in_project(uri, "bob", "wsp") as b:
        # CTAS writes what bob sees: US rows, hashed e-mails.
        with b.cursor() as cur:
            cur.execute("CREATE TABLE workspace.emp AS SELECT employee_id, email, region FROM hr.employees")
        assert rows(b, "SELECT count(*), count(DISTINCT region) FROM workspace.emp") == [(311, 1)]
        assert rows(b, "SELECT count(*) FROM workspace.emp WHERE email LIKE '%@%'") == [(0,)]
        with b.cursor() as cur:
            assert cur.execute("INSERT INTO workspace.emp VALUES (-1, 'x', 'US')") is None or True
        assert rows(b, "SELECT count(*) FROM workspace.emp") == [(312,)]
        assert ("wsp", "workspace", "emp") in tables(b)

        # adbc_ingest, each mode.
        data = pa.table({"id": [1, 2, 3], "note": ["a", "b", "c"]})
        with b.cursor() as cur:
            assert cur.adbc_ingest("notes", data, mode="create", db_schema_name="workspace") == 3
            with pytest.raises(adbc_driver_manager.Error) as err:
                cur.adbc_ingest("notes", data, mode="create", db_schema_name="workspace")
            assert "workspace table notes already exists" in str(err.value)
            assert cur.adbc_ingest("notes", data, mode="append", db_schema_name="workspace") == 3
            with pytest.raises(adbc_driver_manager.Error) as err:
                cur.adbc_ingest("nope", data, mode="append", db_schema_name="workspace")
            assert "workspace table nope does not exist" in str(err.value)
            assert cur.adbc_ingest("notes", data.slice(0, 1), mode="replace", db_schema_name="workspace") == 1
            assert cur.adbc_ingest("more", data, mode="create_append") == 3
            assert cur.adbc_ingest("more", data, mode="create_append") == 3
            bad = pa.table({"other": [1.5]})
            with pytest.raises(adbc_driver_manager.Error) as err:
                cur.adbc_ingest("more", bad, mode="append")
            assert "do not match workspace table more" in str(err.value)
            with pytest.raises(adbc_driver_manager.Error) as err:
                cur.adbc_ingest("../escape", data, mode="create")
            assert "is not valid" in str(err.value)
        assert rows(b, "SELECT id, note FROM workspace.notes") == [(1, "a")]
        assert rows(b, "SELECT count(*) FROM workspace.more") == [(6,)]

        # polars through ADBC.
        pl.DataFrame({"k": [10, 20]}).write_database("workspace.pl", connection=b, engine="adbc")
        assert rows(b, "SELECT sum(k) FROM workspace.pl") == [(30,)]

    # Another member reads it in the project.
    with in_project(uri, "sally", "wsp") as s:
        assert rows(s, "SELECT count(*) FROM workspace.more") == [(6,)]

    # Outside the project, or from another project, it does not exist.
    with connect(uri, "bob") as b:
        with pytest.raises(adbc_driver_manager.Error):
            rows(b, "SELECT * FROM workspace.more")
        with b.cursor() as cur, pytest.raises(adbc_driver_manager.Error) as err:
            cur.adbc_ingest("more", pa.table({"id": [1], "note": ["x"]}), mode="append")
        assert "needs a project" in str(err.value)
    with connect(uri, "sally") as s:
        rows(s, "CREATE PROJECT wsp_other")
    with in_project(uri, "sally", "wsp_other") as s:
        with pytest.raises(adbc_driver_manager.Error):
            rows(s, "SELECT * FROM workspace.more")
        assert rows(s, "SHOW TABLES IN workspace") == []
    with pytest.raises(adbc_driver_manager.Error) as err:
        with in_project(uri, "carol", "wsp") as c:
            rows(c, "SELECT * FROM workspace.more")
    assert "carol is not a member of project wsp" in str(err.value)

    # Derived source: readable outside by a holder of the shared
    # entitlements (staff, region US), refused to carol (region EU).
    with in_project(uri, "sally", "wsp") as s:
        rows(s, "CREATE DERIVED DATA SOURCE analytics.wsp_emp FROM WORKSPACE TABLE emp")
    with connect(uri, "bob") as b:
        assert rows(b, "SELECT count(*) FROM analytics.wsp_emp") == [(312,)]
    with connect(uri, "carol") as c:
        with pytest.raises(adbc_driver_manager.Error) as err:
            rows(c, "SELECT count(*) FROM analytics.wsp_emp")
        assert "carol is not subscribed to analytics.wsp_emp" in str(err.value)

    # DROP TABLE; the derived source keeps its own files.
    with in_project(uri, "bob", "wsp") as b:
        rows(b, "DROP TABLE workspace.emp")
        assert "emp" not in [r[0] for r in rows(b, "SHOW TABLES IN workspace")]
    with connect(uri, "bob") as b:
        assert rows(b, "SELECT count(*) FROM analytics.wsp_emp") == [(312,)]

    if s3 is not None:
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="veil").get("Contents", [])]
        assert any(k.startswith("warehouse/projects/") and k.endswith(".parquet") for k in keys), keys


def _files(root):
    return sorted(str(p.relative_to(root)) for p in pathlib.Path(root).rglob("*") if p.is_file())


def test_sigkill_during_a_large_ctas_leaves_no_partial_table(tmp_path):
    data_dir = str(tmp_path)
    proc, uri = start_server(data_dir)
    setup_project(uri, "crash")
    with in_project(uri, "bob", "crash") as b:
        rows(b, "CREATE TABLE workspace.small AS SELECT employee_id FROM hr.employees")
    projects = pathlib.Path(data_dir, "warehouse", "projects")
    committed = _files(projects)
    assert len(committed) == 1

    big = (
        "CREATE TABLE workspace.big AS SELECT value, value * 7 AS y, "
        "concat('row number ', CAST(value AS VARCHAR)) AS t FROM range(200000000)"
    )
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; sys.path.insert(0, sys.argv[3]); from helpers import connect, rows; "
            "c = connect(sys.argv[1], 'bob', **{'adbc.flight.sql.rpc.call_header.x-veil-project': 'crash'}); "
            "rows(c, sys.argv[2])",
            uri,
            big,
            str(pathlib.Path(__file__).parent),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Kill the server once the big table's files are being written.
    deadline = time.time() + 120
    while time.time() < deadline:
        if any("/big/" in f or f.startswith("big/") or "big" in f.split("/") for f in _files(projects)):
            break
        time.sleep(0.05)
    else:
        pytest.fail("the CTAS never started writing")
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    writer.wait(timeout=60)
    assert any("big" in f for f in _files(projects)), "the crash left a partial write to clean up"

    proc, uri = start_server(data_dir)
    try:
        with in_project(uri, "bob", "crash") as b:
            listed = [r[0] for r in rows(b, "SHOW TABLES IN workspace")]
            assert listed == ["small"]
            assert rows(b, "SELECT count(*) FROM workspace.small") == [(311,)]
        assert _files(projects) == committed, "no orphan file remains after start-up"
    finally:
        stop_server(proc)


def test_concurrent_appends_keep_every_row_once(server):
    import threading

    setup_project(server, "wsconc")
    with in_project(server, "bob", "wsconc") as b:
        rows(b, "CREATE TABLE workspace.log (writer VARCHAR, n BIGINT)")
    errors = []

    def append(user):
        try:
            with in_project(server, user, "wsconc") as c, c.cursor() as cur:
                for n in range(10):
                    cur.adbc_ingest("log", pa.table({"writer": [user], "n": [n]}), mode="append")
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=append, args=(u,)) for u in ("bob", "sally")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with in_project(server, "bob", "wsconc") as b:
        assert rows(b, "SELECT count(*), count(DISTINCT writer || '-' || CAST(n AS VARCHAR)) FROM workspace.log") == [
            (20, 20)
        ]


def test_a_broader_members_table_reaches_no_one_who_sees_less(server):
    """Outside equalization sally (hr) reads raw SSNs of every region; a
    table she writes is refused to bob in the project and cannot be derived
    for the project's least-privileged entitlements; what bob writes under
    the 'Research' purpose (every region of transactions) is derived as
    purpose-bound, and outside any project bob cannot read it."""
    setup_project(server, "wsreach")
    with connect(server, "sally") as s:
        rows(s, "ALTER PROJECT wsreach ADD DATA SOURCE sales.transactions")
        rows(s, "ALTER PROJECT wsreach ADD PURPOSE 'Research'")
    with connect(server, "pam") as p:
        rows(p, "APPROVE PURPOSE 'Research' FOR PROJECT wsreach")
    with in_project(server, "sally", "wsreach") as s:
        rows(s, "CREATE TABLE workspace.raw AS SELECT employee_id, ssn FROM hr.employees")
        assert rows(s, "SELECT count(ssn) FROM workspace.raw") == [(1000,)]
    with in_project(server, "bob", "wsreach") as b:
        with pytest.raises(adbc_driver_manager.Error) as err:
            rows(b, "SELECT ssn FROM workspace.raw WHERE ssn IS NOT NULL")
        text = str(err.value)
        assert "bob may not read workspace table raw" in text
        assert "column ssn is masked" in text
        assert re.search(r"\d{3}-\d{2}-\d{4}", text) is None, "no SSN in the error"
        rows(b, "CREATE TABLE workspace.tx AS SELECT * FROM sales.transactions")
    with in_project(server, "sally", "wsreach") as s:
        with pytest.raises(adbc_driver_manager.Error) as err:
            rows(s, "CREATE DERIVED DATA SOURCE analytics.wsraw FROM WORKSPACE TABLE raw")
        assert "workspace table raw cannot be derived" in str(err.value)
        rows(s, "CREATE DERIVED DATA SOURCE analytics.wstx FROM WORKSPACE TABLE tx")
    with connect(server, "bob") as b:
        assert rows(b, "SELECT count(*) FROM sales.transactions") == [(832,)]
        with pytest.raises(adbc_driver_manager.Error) as err:
            rows(b, "SELECT count(*) FROM analytics.wstx")
        assert "bob is not subscribed to analytics.wstx" in str(err.value)
        with pytest.raises(adbc_driver_manager.Error):
            rows(b, "SELECT count(*) FROM analytics.wsraw")
