"""Faults against a real `veil serve`: SIGKILL while queries are being
audited, and a full disk (a small tmpfs as the warehouse) under workspace
writes. The SIGKILL tests of governance changes and of a large CTAS live in
test_audit.py and test_workspaces.py."""

import json
import signal
import subprocess
import threading
import time

import adbc_driver_manager
import pytest
from conftest import start_server, stop_server
from helpers import connect, rows

PROJECT = "adbc.flight.sql.rpc.call_header.x-veil-project"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_sigkill_during_audit_writes_loses_no_acknowledged_record(tmp_path):
    data_dir = str(tmp_path)
    proc, uri = start_server(data_dir)
    acknowledged = []

    def run_queries(user):
        try:
            with connect(uri, user) as c:
                for i in range(1_000_000):
                    sql = f"SELECT {i} AS n, '{user}' AS who"
                    rows(c, sql)
                    acknowledged.append(sql)
        except Exception:
            pass  # the server went away

    workers = [threading.Thread(target=run_queries, args=(u,)) for u in ("bob", "carol")]
    for w in workers:
        w.start()
    deadline = time.time() + 60
    while len(acknowledged) < 40 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    for w in workers:
        w.join(timeout=60)
    assert len(acknowledged) >= 40

    proc, uri = start_server(data_dir)
    try:
        with connect(uri, "admin", "admin-pw") as a:
            recorded = {
                json.loads(detail)["sql"]
                for (detail,) in rows(
                    a,
                    "SELECT detail FROM system.audit WHERE action = 'Query' "
                    "AND actor IN ('bob', 'carol') AND outcome = 'ok'",
                )
            }
            missing = set(acknowledged) - recorded
            assert not missing, f"answered queries without an audit record: {sorted(missing)[:5]}"
            assert rows(a, "VERIFY AUDIT")[0][0] == "ok"
    finally:
        stop_server(proc)


def _mount_tmpfs(path, size):
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    return done.returncode == 0


def test_a_full_disk_fails_the_write_clearly_and_keeps_the_previous_version(tmp_path):
    warehouse = tmp_path / "warehouse"
    warehouse.mkdir()
    if not _mount_tmpfs(warehouse, "4m"):
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    proc = None
    try:
        proc, uri = start_server(str(tmp_path / "data"), args=["--warehouse", str(warehouse)])
        with connect(uri, "sally") as s:
            for sql in [
                "CREATE PROJECT full_disk",
                "ALTER PROJECT full_disk ADD DATA SOURCE hr.employees",
                "ALTER PROJECT full_disk ADD MEMBER bob",
            ]:
                rows(s, sql)
        with connect(uri, "bob", **{PROJECT: "full_disk"}) as b:
            rows(
                b,
                "CREATE TABLE workspace.small AS "
                "SELECT employee_id, CAST(employee_id AS VARCHAR) AS note FROM hr.employees",
            )
            before = rows(b, "SELECT count(*), sum(employee_id) FROM workspace.small")
            # About 200 MB of incompressible text: far more than the 4 MiB disk.
            big = (
                "SELECT CAST(value AS INT) AS employee_id, "
                "encode(sha256(CAST(value AS VARCHAR)), 'hex') AS note "
                "FROM generate_series(1, 3000000)"
            )
            for write in [f"CREATE TABLE workspace.big AS {big}", f"INSERT INTO workspace.small {big}"]:
                with pytest.raises(adbc_driver_manager.Error) as err:
                    rows(b, write)
                assert "(ResourceExhausted;" in str(err.value), str(err.value)
                assert "warehouse is out of space (No space left on device" in str(err.value)
                assert "was not committed and the table is unchanged" in str(err.value)
            assert [r[0] for r in rows(b, "SHOW TABLES IN workspace")] == ["small"]
            assert rows(b, "SELECT count(*), sum(employee_id) FROM workspace.small") == before
            # Space comes back once the failed write's files are gone: a
            # small write succeeds again.
            rows(b, "INSERT INTO workspace.small SELECT employee_id, 'x' FROM hr.employees LIMIT 1")
            assert rows(b, "SELECT count(*) FROM workspace.small")[0][0] == before[0][0] + 1
    finally:
        if proc is not None:
            stop_server(proc)
        subprocess.run(["umount", str(warehouse)], check=False)
