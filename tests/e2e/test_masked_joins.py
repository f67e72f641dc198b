"""Masked joins end to end with the ADBC driver, across a server restart and
a key rotation, on a server of its own (it restarts it)."""

import warnings

from conftest import start_server, stop_server
from helpers import connect, rows

warnings.filterwarnings("ignore", message="Cannot disable autocommit")

JOIN = "SELECT count(*) FROM sales.transactions t JOIN payments.cards c ON t.card_id = c.card_id"
TOKENS = "SELECT card_id FROM payments.cards ORDER BY card_id LIMIT 5"
IN_PROJECT = {"adbc.flight.sql.rpc.call_header.x-veil-project": "py_joins"}


def setup(uri):
    with connect(uri, "admin") as admin:
        for sql in [
            "ALTER DATA SOURCE sales.transactions TAG COLUMN card_id WITH ('Join.Card')",
            "ALTER DATA SOURCE payments.cards TAG COLUMN card_id WITH ('Join.Card')",
            "CREATE MASKING POLICY card_keys ON COLUMNS TAGGED 'Join.Card' USING HASH FOR has_group('analysts')",
        ]:
            rows(admin, sql)
    with connect(uri, "sally") as s:
        for sql in [
            "CREATE PROJECT py_joins",
            "ALTER PROJECT py_joins ADD DATA SOURCE sales.transactions",
            "ALTER PROJECT py_joins ADD DATA SOURCE payments.cards",
            "ALTER PROJECT py_joins ADD MEMBER carol",
        ]:
            rows(s, sql)
    with connect(uri, "alice") as a:
        return rows(a, JOIN + " WHERE t.region = 'EU'")[0][0]


def test_masked_joins_across_restart_and_rotation(tmp_path):
    data_dir = str(tmp_path)
    proc, uri = start_server(data_dir)
    try:
        unmasked = setup(uri)
        assert unmasked == 1007
        with connect(uri, "carol") as c:
            assert rows(c, JOIN) == [(0,)], "outside projects"
            outside = rows(c, TOKENS)
        with connect(uri, "carol", **IN_PROJECT) as c:
            assert rows(c, JOIN) == [(0,)], "project without masked joins"
        with connect(uri, "sally") as s:
            rows(s, "ALTER PROJECT py_joins SET MASKED JOINS ON")
        with connect(uri, "carol", **IN_PROJECT) as c:
            assert rows(c, JOIN) == [(unmasked,)]
            inside = rows(c, TOKENS)
            # The join compares raw keys inside the engine; what comes out,
            # directly or through a prepared statement with a parameter, is
            # tokens on both sides, never the raw card ids 1..1000.
            tokens = {r[0] for r in rows(c, "SELECT card_id FROM payments.cards")}
            pairs = rows(
                c,
                "SELECT t.card_id, c.card_id FROM sales.transactions t "
                "JOIN payments.cards c ON t.card_id = c.card_id WHERE t.amount >= ?",
                (0.0,),
            )
            assert len(pairs) == unmasked
            assert all(a == b and a in tokens and not 1 <= a <= 1000 for a, b in pairs)
        assert inside != outside
    finally:
        stop_server(proc)

    proc, uri = start_server(data_dir)
    try:
        with connect(uri, "carol", **IN_PROJECT) as c:
            assert rows(c, TOKENS) == inside, "tokens survive a restart"
            assert rows(c, JOIN) == [(unmasked,)]
        with connect(uri, "carol") as c:
            assert rows(c, TOKENS) == outside
        with connect(uri, "sally") as s:
            assert rows(s, "ROTATE KEYS FOR PROJECT py_joins") == [("key of project py_joins rotated to version 2",)]
        with connect(uri, "carol", **IN_PROJECT) as c:
            rotated = rows(c, TOKENS)
            assert rotated != inside, "tokens change with the key version"
            assert rows(c, JOIN) == [(unmasked,)], "on both sides alike"
    finally:
        stop_server(proc)
