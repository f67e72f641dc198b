"""Projects end to end with the ADBC driver: the project set by header, by
adbc_current_catalog (session option `catalog`) and by USE PROJECT; only the
project's sources are listed; the Sally-and-Bob equalization story."""

import warnings

import adbc_driver_manager
import pytest
from helpers import connect, rows, tables

warnings.filterwarnings("ignore", message="Cannot disable autocommit")

REGIONS = "SELECT count(DISTINCT region) FROM sales.transactions"


def project_with_purpose(server, name):
    """sally's project over transactions with bob; 'Fraud Detection'
    approved by pam and acknowledged by bob."""
    with connect(server, "sally") as s:
        for sql in [
            f"CREATE PROJECT {name}",
            f"ALTER PROJECT {name} ADD DATA SOURCE sales.transactions",
            f"ALTER PROJECT {name} ADD MEMBER bob",
            f"ALTER PROJECT {name} ADD PURPOSE 'Fraud Detection'",
        ]:
            rows(s, sql)
    with connect(server, "pam") as p:
        rows(p, f"APPROVE PURPOSE 'Fraud Detection' FOR PROJECT {name}")
    with connect(server, "bob") as b:
        rows(b, f"ACKNOWLEDGE PURPOSE 'Fraud Detection' FOR PROJECT {name}")


def test_project_by_header(server):
    project_with_purpose(server, "py_header")
    header = {"adbc.flight.sql.rpc.call_header.x-veil-project": "py_header"}
    with connect(server, "bob", **header) as b:
        assert rows(b, REGIONS) == [(3,)]
        assert tables(b) == [("py_header", "sales", "transactions")]
    # The header arrives on the Handshake already: a non-member cannot connect.
    with pytest.raises(adbc_driver_manager.Error) as err:
        with connect(server, "carol", **header) as c:
            rows(c, "SELECT 1")
    assert "carol is not a member of project py_header" in str(err.value)


def test_project_by_current_catalog(server):
    project_with_purpose(server, "py_catalog")
    with connect(server, "bob") as b:
        assert rows(b, REGIONS) == [(1,)]
        assert len(tables(b)) == 3
        b.adbc_current_catalog = "py_catalog"
        assert b.adbc_current_catalog == "py_catalog"
        assert rows(b, REGIONS) == [(3,)]
        assert tables(b) == [("py_catalog", "sales", "transactions")]
        b.adbc_current_catalog = "veil"
        assert rows(b, REGIONS) == [(1,)]


def test_project_by_use_project(server):
    project_with_purpose(server, "py_use")
    with connect(server, "bob") as b:
        assert rows(b, "USE PROJECT py_use") == [("using project py_use",)]
        assert rows(b, REGIONS) == [(3,)]
        assert tables(b) == [("py_use", "sales", "transactions")]
        rows(b, "USE PROJECT NONE")
        assert rows(b, REGIONS) == [(1,)]


def test_sally_and_bob(server):
    query = (
        "SELECT e.email, e.ssn, c.card_number FROM hr.employees e "
        "JOIN payments.cards c ON c.employee_id = e.employee_id "
        "ORDER BY e.employee_id, c.card_id LIMIT 10"
    )
    with connect(server, "sally") as s, connect(server, "bob") as b:
        for sql in [
            "CREATE PROJECT py_story",
            "ALTER PROJECT py_story ADD DATA SOURCE hr.employees",
            "ALTER PROJECT py_story ADD DATA SOURCE payments.cards",
            "ALTER PROJECT py_story ADD MEMBER bob",
        ]:
            rows(s, sql)
        sally_outside = rows(s, query)
        assert all("@" in r[0] and len(r[2]) == 16 for r in sally_outside)
        rows(s, "USE PROJECT py_story")
        rows(b, "USE PROJECT py_story")
        # Before equalization each keeps their own view inside the project.
        assert rows(s, query) == sally_outside
        rows(s, "ALTER PROJECT py_story SET EQUALIZATION ON")
        sally_in, bob_in = rows(s, query), rows(b, query)
        assert sally_in == bob_in
        assert all(len(r[0]) == 32 and r[1] is None and r[2].startswith("*" * 12) for r in sally_in)
        described = rows(s, "DESCRIBE PROJECT py_story")
        eq = [r for r in described if r[0] == "equalization"][0]
        assert eq[1] == "ON" and "has_group('staff') AND has_attribute('region', 'US')" in eq[3]
        rows(s, "USE PROJECT NONE")
        assert rows(s, query) == sally_outside
