"""Audit, impersonation and observability end to end with ADBC: the
impersonation matrix and what system.audit shows of it, VERIFY AUDIT, a
SIGKILL in the middle of governance changes (every change keeps its record
and every record its change), the `veil audit` commands, /metrics and JSON
logs."""

import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
import warnings

import adbc_driver_manager
import pytest
from conftest import ROOT, _binary, _free_port, start_server, stop_server
from helpers import connect, rows

warnings.filterwarnings("ignore", message="Cannot disable autocommit")

IMPERSONATE = "adbc.flight.sql.rpc.call_header.x-veil-impersonate"
PROJECT = "adbc.flight.sql.rpc.call_header.x-veil-project"


def test_impersonation_matrix_and_the_audit_trail(server):
    with connect(server, "sally") as s:
        for sql in [
            "CREATE PROJECT py_imp",
            "ALTER PROJECT py_imp ADD DATA SOURCE hr.employees",
            "ALTER PROJECT py_imp ADD MEMBER bob",
        ]:
            rows(s, sql)
    # Permitted: admin as bob, in bob's project, sees what bob sees.
    with connect(server, "admin", "admin-pw", **{IMPERSONATE: "bob", PROJECT: "py_imp"}) as a:
        assert rows(a, "SELECT DISTINCT region FROM hr.employees") == [("US",)]
        with pytest.raises(adbc_driver_manager.Error) as err:
            rows(a, "CREATE USER py_zed")
        assert "bob lacks permission USER_ADMIN" in str(err.value)
    # Refused: carol is no member of py_imp; bob may not impersonate.
    with pytest.raises(adbc_driver_manager.Error) as err:
        with connect(server, "admin", "admin-pw", **{IMPERSONATE: "carol", PROJECT: "py_imp"}) as a:
            rows(a, "SELECT 1")
    assert "carol is not a member of project py_imp" in str(err.value)
    with pytest.raises(adbc_driver_manager.Error) as err:
        with connect(server, "bob", **{IMPERSONATE: "alice"}) as b:
            rows(b, "SELECT 1")
    assert "bob lacks permission IMPERSONATE_USER" in str(err.value)

    with connect(server, "admin", "admin-pw") as a:
        trail = rows(
            a,
            "SELECT actor, impersonated, project, action, outcome FROM system.audit "
            "WHERE impersonated IN ('bob', 'alice', 'carol') ORDER BY id",
        )
        assert ("admin", "bob", "py_imp", "Query", "ok") in trail
        assert ("admin", "bob", "py_imp", "CreateUser", "error") in trail
        assert ("bob", "alice", None, "Impersonate", "error") in trail
        verified = rows(a, "VERIFY AUDIT")
        assert len(verified) == 1 and verified[0][0] == "ok" and verified[0][2] is None
    with connect(server, "bob") as b:
        with pytest.raises(adbc_driver_manager.Error) as err:
            rows(b, "SELECT * FROM system.audit")
        assert "bob lacks permission AUDIT" in str(err.value)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_sigkill_during_governance_changes_keeps_changes_and_records_together(tmp_path):
    data_dir = str(tmp_path)
    proc, uri = start_server(data_dir)
    acknowledged = []

    def create_users():
        try:
            with connect(uri, "admin", "admin-pw") as a:
                for i in range(100000):
                    rows(a, f"CREATE USER crash{i} GROUPS ('staff')")
                    acknowledged.append(f"crash{i}")
        except Exception:
            pass  # the server went away

    writer = threading.Thread(target=create_users)
    writer.start()
    deadline = time.time() + 60
    while len(acknowledged) < 20 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    writer.join(timeout=60)
    assert len(acknowledged) >= 20

    proc, uri = start_server(data_dir)
    try:
        with connect(uri, "admin", "admin-pw") as a:
            users = {r[0] for r in rows(a, "SHOW USERS") if r[0].startswith("crash")}
            recorded = {
                r[0]
                for r in rows(
                    a,
                    "SELECT object FROM system.audit WHERE action = 'CreateUser' "
                    "AND outcome = 'ok' AND object LIKE 'crash%'",
                )
            }
            assert users == recorded, "a change without its record, or a record without its change"
            assert set(acknowledged) <= users, "an acknowledged change was lost"
            assert rows(a, "VERIFY AUDIT")[0][0] == "ok"
    finally:
        stop_server(proc)


def _veil(data_dir, *args):
    return subprocess.run(
        [str(_binary()), "--data-dir", data_dir, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, VEIL_ADMIN_PASSWORD="admin-pw", VEIL_LOG="warn"),
    )


def test_an_audit_commit_delay_out_of_bounds_refuses_to_start(tmp_path):
    data_dir = str(tmp_path)
    with pytest.raises(RuntimeError, match="audit_commit_delay_ms must be between 0 and 2, not 9"):
        proc, _ = start_server(data_dir, serve_args=["--audit-commit-delay-ms", "9"])
        stop_server(proc)
    with pytest.raises(RuntimeError, match="audit_commit_delay_ms must be between 0 and 2"):
        proc, _ = start_server(data_dir, env={"VEIL_AUDIT_COMMIT_DELAY_MS": "-1"})
        stop_server(proc)


def test_audit_commands_metrics_and_json_logs(tmp_path):
    data_dir = str(tmp_path)
    metrics_port = _free_port()
    proc, uri = start_server(
        data_dir,
        args=["--log-format", "json"],
        env={"VEIL_METRICS_LISTEN": f"127.0.0.1:{metrics_port}", "VEIL_LOG": "info"},
        serve_args=["--audit-commit-delay-ms", "1"],
    )
    try:
        with connect(uri, "bob") as b:
            rows(b, "SELECT name FROM hr.employees")
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        assert 'veil_statements_total{kind="query",outcome="ok"}' in text
        assert "veil_active_sessions" in text
        assert "bob" not in text
        # The query's record was committed (and counted) before its answer.
        metric = {l.split(" ")[0]: float(l.split(" ")[1]) for l in text.splitlines() if l and not l.startswith("#")}
        assert metric["veil_audit_group_commits_total"] >= 1, text
        assert metric["veil_audit_group_commit_records_total"] >= metric["veil_audit_group_commits_total"], text
    finally:
        stop_server(proc)
    logs = [json.loads(line) for line in proc.stdout.read().splitlines() if line.startswith("{")]
    statements = [l for l in logs if l.get("fields", {}).get("message") == "statement"]
    assert any(l["fields"]["user"] == "bob" and l["fields"]["action"] == "Query" for l in statements), logs
    assert not any("bob-pw" in json.dumps(l) for l in logs)

    verify = _veil(data_dir, "audit", "verify")
    assert verify.returncode == 0 and verify.stdout.startswith("ok:"), verify.stdout + verify.stderr
    out = os.path.join(data_dir, "export.jsonl")
    export = _veil(data_dir, "audit", "export", "--format", "jsonl", "--since", "2020-01-01", "--out", out)
    assert export.returncode == 0, export.stderr
    records = [json.loads(l) for l in open(out)]
    assert any(r["actor"] == "bob" and r["action"] == "Query" for r in records)
    assert [r["id"] for r in records] == list(range(1, len(records) + 1))
    archive = _veil(data_dir, "audit", "archive", "--before", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 1)))
    assert archive.returncode == 0 and "archived" in archive.stdout, archive.stdout + archive.stderr
    verify = _veil(data_dir, "audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    proc, uri = start_server(data_dir)
    try:
        with connect(uri, "admin", "admin-pw") as a:
            status, count, first_broken = rows(a, "VERIFY AUDIT")[0]
            assert (status, first_broken) == ("ok", None) and count >= len(records)
    finally:
        stop_server(proc)
    bad = _veil(data_dir, "audit", "export", "--format", "csv", "--out", out)
    assert bad.returncode != 0 and "unknown export format 'csv'" in bad.stderr
    # A damaged archive: the chain is broken from its first record, the
    # CLI names the file, and VERIFY AUDIT answers broken (it was an
    # internal error).
    archive_dir = os.path.join(data_dir, "audit-archive")
    [name] = [f for f in os.listdir(archive_dir) if f.endswith(".parquet")]
    path = os.path.join(archive_dir, name)
    original = open(path, "rb").read()
    damaged = bytearray(original)
    damaged[4:4 + 64] = bytes(64)  # the first page's header
    open(path, "wb").write(bytes(damaged))
    verify = _veil(data_dir, "audit", "verify")
    assert verify.returncode != 0, verify.stdout + verify.stderr
    assert "broken: record 1 of" in verify.stderr, verify.stderr
    assert f"cannot read audit archive {name}: " in verify.stderr, verify.stderr
    proc, uri = start_server(data_dir)
    try:
        with connect(uri, "admin", "admin-pw") as a:
            status, _, first_broken = rows(a, "VERIFY AUDIT")[0]
            assert (status, first_broken) == ("broken", 1)
    finally:
        stop_server(proc)
    open(path, "wb").write(original)
    verify = _veil(data_dir, "audit", "verify")
    assert verify.returncode == 0 and verify.stdout.startswith("ok:"), verify.stdout + verify.stderr
