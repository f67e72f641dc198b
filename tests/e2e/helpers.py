"""Connecting as a demo user and running statements with the ADBC driver."""

import adbc_driver_flightsql.dbapi as flight_sql


def connect(uri, user, password=None, **options):
    """A DB-API connection as `user` (password `<user>-pw` by default);
    `options` are extra ADBC database options (e.g. call headers)."""
    db_kwargs = {"username": user, "password": password or f"{user}-pw"}
    db_kwargs.update(options)
    return flight_sql.connect(uri, db_kwargs=db_kwargs, autocommit=True)


def rows(conn, sql, params=None):
    """Runs one statement through cursor.execute and returns every row."""
    with conn.cursor() as cur:
        cur.execute(sql, parameters=params)
        return cur.fetchall()


def tables(conn):
    """(catalog, schema, table) of everything adbc_get_objects lists."""
    objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
    return sorted(
        (cat["catalog_name"], schema["db_schema_name"], t["table_name"])
        for cat in objects
        for schema in cat["catalog_db_schemas"] or []
        for t in schema["db_schema_tables"] or []
    )
