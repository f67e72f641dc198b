"""Two real `veil serve` processes on one PostgreSQL catalog, one warehouse
and one master key (DESIGN.md section 7), with the Python ADBC driver: what
a client of one server changes governs the clients of the other, a
workspace table written through one is read through the other, and
`veil audit verify` checks the one chain both wrote."""

import os
import pathlib
import pwd
import shutil
import subprocess
import tempfile
import time

import pytest

from conftest import ROOT, _binary, start_server, stop_server
from helpers import connect, rows


def _pg_bin() -> pathlib.Path:
    if os.environ.get("VEIL_PG_BIN"):
        return pathlib.Path(os.environ["VEIL_PG_BIN"])
    versions = sorted(
        (int(p.name), p / "bin")
        for p in pathlib.Path("/usr/lib/postgresql").glob("*")
        if p.name.isdigit() and (p / "bin" / "initdb").exists()
    )
    assert versions, "no PostgreSQL server: run scripts/setup (Debian's postgresql)"
    return versions[-1][1]


@pytest.fixture
def postgres():
    """A throwaway server on a Unix socket; yields its libpq parameters."""
    bin_dir = _pg_bin()
    # Under /tmp itself: the postgres user must reach the directory.
    d = pathlib.Path(tempfile.mkdtemp(prefix="veil-pg-"))
    as_postgres = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(d, user.pw_uid, user.pw_gid)
        as_postgres = ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", "--"]
    subprocess.run(
        [*as_postgres, bin_dir / "initdb", "-D", d / "data", "-U", "veil", "-A", "trust", "-E", "UTF8", "--no-sync"],
        check=True,
        capture_output=True,
    )
    log = open(d / "server.log", "w")
    proc = subprocess.Popen(
        [*as_postgres, bin_dir / "postgres", "-D", d / "data", "-k", d, "-c", "listen_addresses=", "-c", "fsync=off"],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    deadline = time.time() + 60
    while subprocess.run([bin_dir / "pg_isready", "-q", "-h", d]).returncode != 0:
        assert time.time() < deadline, (d / "server.log").read_text()
        time.sleep(0.1)
    try:
        yield f"host={d} user=veil dbname=postgres"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        shutil.rmtree(d, ignore_errors=True)


def test_two_servers_share_one_catalog(tmp_path, postgres):
    warehouse = tmp_path / "warehouse"
    env = {"VEIL_MASTER_KEY": os.urandom(32).hex(), "VEIL_CATALOG": postgres}
    a, uri_a = start_server(str(tmp_path / "a"), ("--warehouse", str(warehouse)), env=env)
    b, uri_b = start_server(str(tmp_path / "b"), ("--warehouse", str(warehouse)), env=env)
    try:
        count = "SELECT count(*) FROM sales.transactions"
        with connect(uri_b, "bob") as bob_b, connect(uri_a, "admin") as admin_a:
            assert rows(bob_b, count) == [(832,)]
            rows(admin_a, "CREATE ROW POLICY big_only ON sales.transactions USING amount > 400")
            big = rows(bob_b, count)[0][0]
            assert 0 < big < 832
            rows(admin_a, "DROP POLICY big_only")
            assert rows(bob_b, count) == [(832,)]
            # bob on B still sees no SSN, as on A.
            assert rows(bob_b, "SELECT DISTINCT ssn FROM hr.employees") == [(None,)]

        # sally's project, made on A; bob writes its workspace on B.
        with connect(uri_a, "sally") as sally_a:
            for sql in [
                "CREATE PROJECT shared",
                "ALTER PROJECT shared ADD DATA SOURCE hr.employees",
                "ALTER PROJECT shared ADD MEMBER bob",
                "ALTER PROJECT shared SET EQUALIZATION ON",
            ]:
                rows(sally_a, sql)
        header = {"adbc.flight.sql.rpc.call_header.x-veil-project": "shared"}
        with connect(uri_b, "bob", **header) as bob_b:
            rows(bob_b, "CREATE TABLE workspace.ids AS SELECT employee_id, ssn FROM hr.employees")
        with connect(uri_a, "sally", **header) as sally_a:
            got = rows(sally_a, "SELECT count(*), count(ssn) FROM workspace.ids")
            # Equalized: the project's least access, so no SSN came along.
            assert got[0][0] > 0 and got[0][1] == 0, got
    finally:
        stop_server(a)
        stop_server(b)
    # One chain, both servers' records: verified from the command line.
    out = subprocess.run(
        [str(_binary()), "--data-dir", str(tmp_path / "a"), "audit", "verify"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok" in out.stdout, out.stdout


def test_a_sqlite_catalog_moves_to_postgres_through_export(tmp_path, postgres):
    """The demo catalog (SQLite) exported with `veil export` and replayed
    with `veil apply` into a PostgreSQL catalog: the same users log in with
    the same passwords and see the same data through a server on it."""
    sqlite_dir = tmp_path / "sqlite"
    proc, uri_old = start_server(str(sqlite_dir))
    try:
        with connect(uri_old, "sally") as sally:
            rows(sally, "CREATE PROJECT moved DOCUMENTATION 'it''s moving'")
            rows(sally, "ALTER PROJECT moved ADD MEMBER bob")
            rows(sally, "ALTER PROJECT moved ADD DATA SOURCE sales.transactions")
        queries = [
            ("bob", "SELECT count(*), count(ssn), max(salary) FROM hr.employees"),
            ("carol", "SELECT count(*) FROM sales.transactions"),
            ("alice", "SELECT card_number FROM payments.cards ORDER BY card_id LIMIT 2"),
        ]
        before = {}
        for user, sql in queries:
            with connect(uri_old, user) as c:
                before[(user, sql)] = rows(c, sql)
    finally:
        stop_server(proc)

    env = {**os.environ, "VEIL_ADMIN_PASSWORD": "admin-pw"}
    script = tmp_path / "governance.sql"
    out = subprocess.run(
        [str(_binary()), "--data-dir", str(sqlite_dir), "export", "--out", str(script)],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert oct(script.stat().st_mode & 0o777) == "0o600"
    text = script.read_text()
    assert "PASSWORD HASH '$argon2id$" in text and "bob-pw" not in text
    assert "CREATE PROJECT moved DOCUMENTATION 'it''s moving'" in text

    pg_dir = tmp_path / "pg"
    pg_env = {**env, "VEIL_CATALOG": postgres}
    out = subprocess.run(
        [str(_binary()), "--data-dir", str(pg_dir), "apply", str(script)],
        cwd=ROOT, env=pg_env, capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 already present" in out.stdout, out.stdout

    proc, uri_new = start_server(str(pg_dir), env={"VEIL_CATALOG": postgres})
    try:
        for (user, sql), expected in before.items():
            with connect(uri_new, user) as c:
                assert rows(c, sql) == expected, (user, sql)
        header = {"adbc.flight.sql.rpc.call_header.x-veil-project": "moved"}
        with connect(uri_new, "bob", **header) as bob:
            assert rows(bob, "SELECT count(*) FROM sales.transactions")[0][0] > 0
    finally:
        stop_server(proc)
