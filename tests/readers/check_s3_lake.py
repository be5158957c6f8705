"""Reads the demo lake that a run wrote to an S3-compatible store with DuckDB (httpfs, loaded
offline from PyPI's duckdb-extension-httpfs), PyArrow and Polars, each with nothing but a glob,
and checks that they see exactly the rows of the same pipeline's local lake.

Usage: check_s3_lake.py LOCAL_LAKE S3_LAKE_URL   (e.g. lake s3://ci-lake/lake)
Credentials and endpoint from the standard variables: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_REGION, AWS_ENDPOINT_URL (http://host:port).
"""
import os
import sys
from urllib.parse import urlparse

import duckdb
import duckdb_extension_httpfs
import polars as pl
import pyarrow.dataset as ds
import pyarrow.fs as pafs

local, remote = sys.argv[1], sys.argv[2].rstrip("/")
key, secret = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
region = os.environ.get("AWS_REGION", "us-east-1")
endpoint = urlparse(os.environ["AWS_ENDPOINT_URL"])
use_ssl = endpoint.scheme == "https"

ext = os.path.join(
    os.path.dirname(duckdb_extension_httpfs.__file__),
    f"extensions/v{duckdb.__version__}/httpfs.duckdb_extension",
)
con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
con.execute(f"LOAD '{ext}'")
con.execute(
    f"""CREATE SECRET lake (TYPE s3, KEY_ID '{key}', SECRET '{secret}', REGION '{region}',
        ENDPOINT '{endpoint.netloc}', URL_STYLE 'path', USE_SSL {str(use_ssl).lower()})"""
)

# What identifies a row in every sink: the same columns, compared as sorted tuples.
COLUMNS = "provider, message_id, version, sent_at::varchar, md5(coalesce(text, ''))"


def duck_rows(reader):
    return sorted(con.execute(f"select {COLUMNS} from {reader}").fetchall())


checks = [
    ("messages", "read_parquet('{}/messages/**/*.parquet', hive_partitioning = true)"),
    ("csv", "read_csv('{}/csv/**/*.csv', hive_partitioning = true)"),
    ("archive", "read_json('{}/archive/**/*.jsonl.gz', hive_partitioning = true)"),
]
for sink, reader in checks:
    want = duck_rows(reader.format(local))
    got = duck_rows(reader.format(remote))
    print(f"{sink}: local={len(want)} s3={len(got)} (DuckDB)")
    assert want, f"{sink}: the local lake is empty"
    assert got == want, f"{sink}: the S3 lake's rows differ from the local lake's"

# PyArrow and Polars on the Parquet sink, a glob (dataset directory) each.
bucket_and_prefix = remote.removeprefix("s3://")
fs = pafs.S3FileSystem(
    access_key=key,
    secret_key=secret,
    region=region,
    endpoint_override=endpoint.netloc,
    scheme=endpoint.scheme,
)
n_local = ds.dataset(f"{local}/messages", format="parquet", partitioning="hive").count_rows()
n_arrow = ds.dataset(
    f"{bucket_and_prefix}/messages", filesystem=fs, format="parquet", partitioning="hive"
).count_rows()
n_polars = (
    pl.scan_parquet(
        f"{remote}/messages/**/*.parquet",
        storage_options={
            "aws_access_key_id": key,
            "aws_secret_access_key": secret,
            "aws_region": region,
            "aws_endpoint_url": os.environ["AWS_ENDPOINT_URL"],
            "aws_allow_http": "true" if not use_ssl else "false",
        },
    )
    .select(pl.len())
    .collect()
    .item()
)
print(f"messages: local={n_local} pyarrow={n_arrow} polars={n_polars}")
assert n_local == n_arrow == n_polars, "PyArrow or Polars disagree with the local lake"
print("S3 lake readable by DuckDB, PyArrow and Polars, equal to the local lake")
