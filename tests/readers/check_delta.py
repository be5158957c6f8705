"""Reads the demo's Delta table (the `delta` sink, ./lake/delta) with DuckDB's delta_scan (the
extension loaded offline from PyPI's duckdb-extension-delta) and with the `deltalake` package
(as Polars' read_delta does), and compares both with the demo's Parquet lake (./lake/messages)
read by DuckDB with a glob: the same rows, once each.

Usage: python check_delta.py LAKE_DIR
Needs: duckdb==1.5.5, duckdb-extension-delta==1.5.5, deltalake, pyarrow.
"""

import os
import sys

import duckdb
import duckdb_extension_delta
from deltalake import DeltaTable

lake = sys.argv[1].rstrip("/")
ext = os.path.join(
    os.path.dirname(duckdb_extension_delta.__file__),
    f"extensions/v{duckdb.__version__}/delta.duckdb_extension",
)
con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
con.execute(f"LOAD '{ext}'")

COLUMNS = "provider, message_id, version, sent_at::varchar, md5(coalesce(text, ''))"


def rows(reader):
    return sorted(con.execute(f"select {COLUMNS} from {reader}").fetchall())


want = rows(f"read_parquet('{lake}/messages/**/*.parquet', hive_partitioning = true)")
assert want, "the Parquet lake is empty"
duck = rows(f"delta_scan('{lake}/delta')")
print(f"parquet={len(want)} delta_scan={len(duck)}")
assert duck == want, "DuckDB's delta_scan sees the rows of the Parquet lake"

table = DeltaTable(f"{lake}/delta")
arrow = table.to_pyarrow_table()
con.register("via_deltalake", arrow)
via = rows("via_deltalake")
print(f"deltalake: version={table.version()} rows={len(via)}")
assert via == want, "the deltalake package sees the rows of the Parquet lake"
protocols = sum(1 for h in table.history() if h.get("operation") == "CREATE TABLE")
assert protocols == 1, f"the table was created once, not {protocols} times"
print("ok")
