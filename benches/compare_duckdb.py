#!/usr/bin/env python3
"""The 22 TPC-H queries on DuckDB over the files `veil bench generate` wrote,
plain and with Veil's benchmark governance profile expressed as DuckDB views
(benches/tpch/governance.sql: sha256 for HASH, CASE for ROUND, WHERE for row
policies). Writes the same JSON shape as `veil bench tpch --out`.

    python3 benches/compare_duckdb.py --data /tmp/tpch1 --out duckdb.json

DuckDB comes from PyPI into a venv this script creates on first use
($VEIL_DUCKDB_VENV, default ~/.cache/veil-duckdb-venv) unless the running
Python already has it.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
QUERIES = HERE / "tpch" / "queries"
TABLES = ["region", "nation", "supplier", "customer", "part", "partsupp", "orders", "lineitem"]

# The restricted principal of the profile: nations 0-12, orders from 1993 on.
NATIONS = ", ".join(str(n) for n in range(13))
# HASH is a keyed HMAC-SHA256 truncated to 32 hex chars in Veil; a keyed
# sha256 of the same width here.
HASH = "left(sha256('veil-bench-key:' || {c}), 32)"
# ROUND 100: floor(x / 100) * 100 as a double, NULL stays NULL.
ROUND = "CASE WHEN {c} IS NULL THEN NULL ELSE floor(CAST({c} AS DOUBLE) / 100) * 100 END"

GOVERNED = {
    "customer": f"""SELECT c_custkey, {HASH.format(c='c_name')} AS c_name,
        {HASH.format(c='c_address')} AS c_address, c_nationkey,
        {HASH.format(c='c_phone')} AS c_phone, {ROUND.format(c='c_acctbal')} AS c_acctbal,
        c_mktsegment, c_comment
        FROM raw.customer WHERE c_nationkey IN ({NATIONS})""",
    "supplier": f"""SELECT s_suppkey, {HASH.format(c='s_name')} AS s_name,
        {HASH.format(c='s_address')} AS s_address, s_nationkey,
        {HASH.format(c='s_phone')} AS s_phone, {ROUND.format(c='s_acctbal')} AS s_acctbal,
        s_comment
        FROM raw.supplier WHERE s_nationkey IN ({NATIONS})""",
    "orders": "SELECT * FROM raw.orders WHERE o_orderdate >= DATE '1993-01-01'",
}


def ensure_duckdb():
    """Imports duckdb, re-running this script in a venv that has it if needed."""
    try:
        import duckdb  # noqa: F401

        return
    except ImportError:
        pass
    if os.environ.get("VEIL_DUCKDB_REEXEC"):
        sys.exit("duckdb is still missing in the venv; see the pip output above")
    venv = Path(os.environ.get("VEIL_DUCKDB_VENV", Path.home() / ".cache" / "veil-duckdb-venv"))
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "-r", str(HERE / "requirements-duckdb.txt")],
        check=True,
    )
    env = dict(os.environ, VEIL_DUCKDB_REEXEC="1")
    os.execve(str(python), [str(python), *sys.argv], env)


def machine():
    """The same description `veil bench` writes."""
    cores = os.cpu_count() or 1
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                gib = int(line.split()[1]) / 1048576
                return f"{cpu}, {cores} cores, {gib:.0f} GiB, linux"
    except OSError:
        pass
    return f"{cpu}, {cores} cores, {sys.platform}"


def query(n):
    text = (QUERIES / f"q{n}.sql").read_text()
    lines = [l for l in text.splitlines() if not l.lstrip().startswith("--")]
    return "\n".join(lines).strip().rstrip(";")


def connect(data, governed):
    import duckdb

    con = duckdb.connect()
    con.execute("CREATE SCHEMA raw")
    con.execute("CREATE SCHEMA tpch")
    for t in TABLES:
        path = str(Path(data) / t / "*.parquet").replace("'", "''")
        con.execute(f"CREATE VIEW raw.{t} AS SELECT * FROM read_parquet('{path}')")
        body = GOVERNED.get(t) if governed else None
        con.execute(f"CREATE VIEW tpch.{t} AS {body or f'SELECT * FROM raw.{t}'}")
    return con


def timed(con, sql):
    start = time.perf_counter()
    rows = con.execute(sql).fetchall()
    return (time.perf_counter() - start) * 1000.0, len(rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the directory `veil bench generate` wrote")
    p.add_argument("--scale", type=float, help="scale factor (default: recorded in --data)")
    p.add_argument("--iterations", type=int, default=5, help="measured rounds per query")
    p.add_argument("--query", type=int, action="append", help="only these queries")
    p.add_argument("--out", help="write the result JSON here")
    args = p.parse_args()
    ensure_duckdb()

    scale = args.scale
    marker = Path(args.data) / "veil-tpch.json"
    if scale is None and marker.exists():
        scale = json.loads(marker.read_text())["scale"]
    if scale is None:
        sys.exit(f"{args.data} does not record its scale: pass --scale")
    for t in TABLES:
        if not (Path(args.data) / t).is_dir():
            sys.exit(f"{args.data} has no {t}/: run `veil bench generate --out {args.data}` first")

    plain, governed = connect(args.data, False), connect(args.data, True)
    results = []
    for n in args.query or range(1, 23):
        sql = query(n)
        _, rows = timed(plain, sql)  # warm-up
        _, restricted_rows = timed(governed, sql)
        a, c = [], []
        for _ in range(max(1, args.iterations)):
            a.append(timed(plain, sql)[0])
            c.append(timed(governed, sql)[0])
        q = {
            "name": f"q{n}",
            "ungoverned_ms": statistics.median(a),
            "unrestricted_ms": None,
            "restricted_ms": statistics.median(c),
            "rows": rows,
            "restricted_rows": restricted_rows,
        }
        print(f"q{n}: ungoverned {q['ungoverned_ms']:.1f} ms, restricted {q['restricted_ms']:.1f} ms", file=sys.stderr)
        results.append(q)
    import duckdb

    result = {
        "scale": scale,
        "engine": "duckdb",
        "machine": machine(),
        "engine_version": duckdb.__version__,
        "queries": results,
        "total": {
            "ungoverned_ms": sum(q["ungoverned_ms"] for q in results),
            "unrestricted_ms": None,
            "restricted_ms": sum(q["restricted_ms"] for q in results),
        },
    }
    t = result["total"]
    print(f"duckdb {duckdb.__version__} at scale {scale}: ungoverned {t['ungoverned_ms']:.1f} ms, "
          f"governed views {t['restricted_ms']:.1f} ms ({t['restricted_ms'] / t['ungoverned_ms']:.2f}x)")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"result written to {args.out}")


if __name__ == "__main__":
    main()
