"""End-to-end tests with the real Python ADBC Flight SQL driver."""

import warnings

import adbc_driver_manager
import polars as pl
import pytest
from helpers import connect, rows

warnings.filterwarnings("ignore", message="Cannot disable autocommit")


def test_wrong_password_is_unauthenticated(server):
    with pytest.raises(adbc_driver_manager.Error) as err:
        with connect(server, "bob", "wrong") as conn:
            rows(conn, "SELECT 1")
    assert "UNAUTHENTICATED" in str(err.value)


def test_two_users_see_different_masked_and_filtered_rows(server):
    sql = "SELECT ssn, email, salary, region FROM hr.employees ORDER BY employee_id LIMIT 20"
    with connect(server, "alice") as a, connect(server, "bob") as b:
        alice = rows(a, sql)
        bob = rows(b, sql)
    assert all(len(r[0]) == 11 for r in alice)
    assert {r[3] for r in alice} == {"EU", "US", "APAC"}
    assert all(r[0] is None for r in bob)
    assert all(len(r[1]) == 32 and "@" not in r[1] for r in bob)
    assert all(r[2] % 10000 == 0 for r in bob)
    assert {r[3] for r in bob} == {"US"}


def test_explain_verbose_statistics_count_only_what_the_caller_sees(server):
    # The barrier's statistics, as EXPLAIN VERBOSE prints them over Flight
    # SQL, are the caller's own row count (what SELECT count(*) returns),
    # not the source's raw size: hr.employees has a row policy for bob and
    # carol, payments.cards only a mask (every row visible).
    with connect(server, "bob") as b, connect(server, "carol") as c:
        for conn in (b, c):
            for table in ("hr.employees", "payments.cards"):
                seen = rows(conn, f"SELECT count(*) FROM {table}")[0][0]
                plans = dict(rows(conn, f"EXPLAIN VERBOSE SELECT * FROM {table}"))
                barrier = next(
                    line
                    for line in plans["physical_plan_with_stats"].splitlines()
                    if "GovernedScanExec" in line
                )
                assert f"Rows=Inexact({seen})" in barrier, barrier
                assert "Min=" not in barrier and "Max=" not in barrier, barrier
            assert rows(conn, "SELECT count(*) FROM hr.employees")[0][0] < 1000


def test_bound_parameters(server):
    with connect(server, "bob") as b, connect(server, "alice") as a:
        n_bob = rows(b, "SELECT count(*) FROM hr.employees WHERE department = ?", ("hr",))[0][0]
        n_alice = rows(a, "SELECT count(*) FROM hr.employees WHERE department = ? AND region = ?", ("hr", "US"))[0][0]
        # Parameters do not get around masks: the raw e-mail matches nothing for bob.
        email = rows(a, "SELECT email FROM hr.employees WHERE region = 'US' LIMIT 1")[0][0]
        assert rows(b, "SELECT count(*) FROM hr.employees WHERE email = ?", (email,))[0][0] == 0
    assert n_bob == n_alice > 0


def test_subscription_and_error_codes(server):
    with connect(server, "dave") as d:
        with pytest.raises(adbc_driver_manager.Error) as err:
            rows(d, "SELECT * FROM hr.employees")
        assert "PERMISSION_DENIED" in str(err.value) or "permission denied" in str(err.value)
        assert "dave is not subscribed to hr.employees" in str(err.value)
        objects = d.adbc_get_objects(depth="tables").read_all().to_pylist()
        tables = [
            t["table_name"]
            for cat in objects
            for schema in cat["catalog_db_schemas"] or []
            for t in schema["db_schema_tables"] or []
        ]
        assert tables == ["transactions"]


def test_parser_bombs_are_refused_and_the_connection_keeps_working(server):
    # Each would take hours (exponential backtracking in sqlparser 0.62) or
    # abort the server (stack overflow) without the parser limits.
    bombs = [
        ("SELECT " + "x-not-b." * 30, "too complex to parse"),
        ("SELECT " + "interval " * 20000 + "1", "nests too deeply"),
        ("SELECT " + "+".join(["1"] * 100000), "more than 2048 operators"),
    ]
    with connect(server, "bob") as b:
        for sql, why in bombs:
            with pytest.raises(adbc_driver_manager.Error) as err:
                rows(b, sql)
            assert "INVALID_ARGUMENT" in str(err.value) or "invalid argument" in str(err.value)
            assert why in str(err.value)
            assert rows(b, "SELECT 1 AS one") == [(1,)]


def test_get_objects_and_table_schema(server):
    with connect(server, "alice") as a:
        objects = a.adbc_get_objects(depth="tables").read_all().to_pylist()
        assert [c["catalog_name"] for c in objects] == ["veil"]
        schemas = sorted(s["db_schema_name"] for s in objects[0]["catalog_db_schemas"])
        assert schemas == ["hr", "payments", "sales"]
        schema = a.adbc_get_table_schema("employees", db_schema_filter="hr")
        assert "ssn" in schema.names and "salary" in schema.names


def test_strings_arrive_as_classic_utf8_not_views(server):
    # Parquet strings are Utf8View inside DataFusion; JDBC and older Arrow
    # clients cannot read view types, so results and metadata carry Utf8.
    import pyarrow as pa

    with connect(server, "alice") as a, connect(server, "bob") as b:
        announced = a.adbc_get_table_schema("employees", db_schema_filter="hr")
        for conn in (a, b):
            with conn.cursor() as cur:
                cur.execute("SELECT ssn, email, region FROM hr.employees LIMIT 3")
                table = cur.fetch_arrow_table()
            assert [f.type for f in table.schema] == [pa.string()] * 3, table.schema
            assert table.num_rows == 3
        assert announced.field("email").type == pa.string()
        assert not any(
            t in (pa.string_view(), pa.binary_view()) for t in announced.types
        ), announced


def test_governance_statements(server):
    with connect(server, "admin", "admin-pw") as admin:
        assert rows(admin, "CREATE USER frank PASSWORD 'frank-pw' GROUPS ('staff') ATTRIBUTES (region = ('EU'))") == [
            ("user frank created",)
        ]
        users = [r[0] for r in rows(admin, "SHOW USERS")]
        assert "frank" in users and "alice" in users
        policies = {r[0] for r in rows(admin, "SHOW POLICIES")}
        assert {"pii_hash", "ssn_null", "employees_region"} <= policies
        assert rows(admin, "VERIFY AUDIT")[0][0] == "ok"
    with connect(server, "frank") as f:
        assert {r[0] for r in rows(f, "SELECT DISTINCT region FROM hr.employees")} == {"EU"}
        with pytest.raises(adbc_driver_manager.Error) as err:
            rows(f, "GRANT PERMISSION GOVERNANCE TO frank")
        assert "frank lacks permission USER_ADMIN" in str(err.value)


def test_polars_read_database(server):
    with connect(server, "carol") as c:
        df = pl.read_database("SELECT region, count(*) AS n FROM sales.transactions GROUP BY region", connection=c)
    assert df["region"].to_list() == ["EU"]
    assert df["n"][0] > 0


def test_session_options_catalog_and_impersonation(server):
    with connect(server, "admin", "admin-pw") as admin:
        assert admin.adbc_current_catalog == "veil"
        admin.adbc_current_catalog = "veil"
        with pytest.raises(adbc_driver_manager.Error) as err:
            admin.adbc_current_catalog = "no_such_project"
        assert "invalid value" in str(err.value)
        admin.adbc_connection.set_options(**{"adbc.flight.sql.session.option.veil.impersonate": "bob"})
        assert {r[0] for r in rows(admin, "SELECT DISTINCT region FROM hr.employees")} == {"US"}
    with connect(server, "bob") as bob:
        with pytest.raises(adbc_driver_manager.Error):
            bob.adbc_connection.set_options(**{"adbc.flight.sql.session.option.veil.impersonate": "alice"})


def test_get_info_names_the_server(server):
    with connect(server, "bob") as b:
        info = b.adbc_get_info()
    assert info["vendor_name"] == "Veil"
