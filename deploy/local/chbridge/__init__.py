"""A ClickHouse HTTP interface over the ClickHouse engine of the chdb-core wheel.

The local stack's ClickHouse: the real engine (MergeTree, materialized views, the SQL dialect),
served so that the official `clickhouse` crate and `curl` talk to it exactly as to a server.
Run it with `python -m chbridge --help`.
"""
