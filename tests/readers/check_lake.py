"""Reads the demo lake with DuckDB, PyArrow and Polars using only a glob, as users would, and
checks that all three see the same rows, UTC timestamps and no bots in the Parquet output."""
import sys

import duckdb
import polars as pl
import pyarrow.dataset as ds

lake = sys.argv[1] if len(sys.argv) > 1 else "lake"
glob = f"{lake}/messages/**/*.parquet"

con = duckdb.connect()
n_duck, bots, tz = con.execute(
    f"select count(*), count(*) filter (where is_bot), any_value(typeof(sent_at)) from read_parquet('{glob}')"
).fetchone()
dates = con.execute(f"select count(distinct sent_date) from read_parquet('{glob}')").fetchone()[0]
n_arrow = ds.dataset(f"{lake}/messages", format="parquet", partitioning="hive").count_rows()
n_polars = pl.scan_parquet(glob).select(pl.len()).collect().item()
n_csv = con.execute(f"select count(*) from read_csv('{lake}/csv/**/*.csv')").fetchone()[0]
n_jsonl = con.execute(f"select count(*) from read_json('{lake}/archive/**/*.jsonl.gz')").fetchone()[0]

print(f"duckdb={n_duck} pyarrow={n_arrow} polars={n_polars} csv={n_csv} jsonl={n_jsonl} "
      f"bots={bots} sent_at={tz} partitions(sent_date)={dates}")
assert n_duck > 0, "empty lake"
assert n_duck == n_arrow == n_polars == n_csv, "readers disagree"
assert n_jsonl >= n_duck, "the archive keeps bots and every version, so it has at least as many rows"
# The two shapes: the lake holds one row per message (its latest version), the archive one row
# per version, and the lake's version of a message is the archive's newest.
arch = f"read_json('{lake}/archive/**/*.jsonl.gz')"
dup_lake = con.execute(f"select count(*) - count(distinct (provider, message_id)) from read_parquet('{glob}')").fetchone()[0]
dup_arch = con.execute(f"select count(*) - count(distinct (provider, message_id, version)) from {arch}").fetchone()[0]
versioned = con.execute(f"select count(*) from (select provider, message_id from {arch} group by all having count(*) > 1)").fetchone()[0]
not_latest = con.execute(f"""select count(*) from read_parquet('{glob}') l
  join (select provider, message_id, max(version) v from {arch} group by all) a using (provider, message_id)
  where l.version is distinct from a.v""").fetchone()[0]
print(f"lake duplicates={dup_lake} archive duplicate versions={dup_arch} "
      f"messages with several versions in the archive={versioned} lake rows not the newest={not_latest}")
assert dup_lake == 0 and dup_arch == 0, "a message (or a version) twice"
assert versioned > 0, "the archive should hold earlier versions of edited messages"
assert not_latest == 0, "the lake should hold every message's newest version"
assert bots == 0, "bots in the Parquet lake"
assert tz == "TIMESTAMP WITH TIME ZONE", f"sent_at is {tz}, not UTC-adjusted"
assert dates > 1, "expected several sent_date partitions"
print("lake readable by DuckDB, PyArrow and Polars")
