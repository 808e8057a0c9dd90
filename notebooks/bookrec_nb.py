"""Notebook helpers: the lake through bookrec's own engine.

Every query goes through `bookrec sql` — the same DataFusion session, SQL dialect, functions
(`json_get`, …), tables (events, dead_letters, the source views, every feature by name, the
model's lists) and lake rules (a feature's current run, the lake's own scan) as `bookrec
batch` — so a query pasted from a notebook into `queries/batch/` behaves the same. The
results come back as Arrow (`--format arrow`) and become pandas DataFrames. The lake is the
one bookrec's configuration names (`BOOKREC_CONFIG`, `BOOKREC__LAKE__URL`, …): a folder or
an S3 bucket alike.

    from bookrec_nb import sql, feature, batch
    sql("SELECT event_type, count(*) AS n FROM events GROUP BY 1")
    feature("../queries/batch/book_popularity.sql", as_of="2026-01-01T00:00:00Z", half_life_days=14)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pyarrow as pa

REPO = Path(__file__).resolve().parent.parent


def _binary() -> str:
    explicit = os.environ.get("BOOKREC_BIN")
    if explicit:
        return explicit
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    for candidate in (target / "release" / "bookrec", target / "debug" / "bookrec"):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("bookrec")
    if found:
        return found
    raise RuntimeError("no bookrec binary: set BOOKREC_BIN or run `cargo build`")


BIN = _binary()


class BookrecError(RuntimeError):
    """A bookrec command failed; the message is what it said on stderr."""


def run(*args: str, timeout: float = 600) -> bytes:
    """Runs `bookrec ARGS…` from the repository root; its stdout, or BookrecError."""
    done = subprocess.run(
        [BIN, *args], cwd=REPO, capture_output=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise BookrecError(
            f"bookrec {' '.join(args)}: {done.stderr.decode(errors='replace').strip()}"
        )
    return done.stdout


def _frame(data: bytes) -> pd.DataFrame:
    return pa.ipc.open_stream(data).read_all().to_pandas()


def sql(query: str) -> pd.DataFrame:
    """A read-only query over the lake, as a DataFrame."""
    return _frame(run("sql", query, "--format", "arrow"))


def feature(path: str | Path, as_of: str | None = None, **params) -> pd.DataFrame:
    """A feature file run as `bookrec batch` runs it (header checked, `${as_of}` and the
    parameters filled in, typed by their defaults), without writing its output."""
    args = ["sql", "--file", str(Path(path).resolve()), "--format", "arrow"]
    if as_of:
        args += ["--as-of", as_of]
    for k, v in params.items():
        args += ["--param", f"{k}={v}"]
    return _frame(run(*args))


def batch(select=(), exclude=(), as_of=None, queries=None, params=None, skip_als=True) -> dict:
    """`bookrec batch`: runs features (selectors as on the command line) and returns the run
    record (outputs, rows, seconds, data test results)."""
    args = ["batch"]
    for s in select:
        args += ["--select", s]
    for s in exclude:
        args += ["--exclude", s]
    if as_of:
        args += ["--as-of", as_of]
    if queries:
        args += ["--queries", str(Path(queries).resolve())]
    for k, v in (params or {}).items():
        args += ["--param", f"{k}={v}"]
    if skip_als:
        args.append("--skip-als")
    return json.loads(run(*args))


def check(queries=None) -> str:
    """`bookrec check`: plans every feature and its tests; the order, or BookrecError."""
    args = ["check"]
    if queries:
        args += ["--queries", str(Path(queries).resolve())]
    return run(*args).decode()


def data_tests(select=(), queries=None, as_of=None) -> dict:
    """`bookrec test --json`: the data tests on the lake's current outputs (failures are
    in the result, not raised)."""
    args = ["test", "--json"]
    for s in select:
        args += ["--select", s]
    if queries:
        args += ["--queries", str(Path(queries).resolve())]
    if as_of:
        args += ["--as-of", as_of]
    done = subprocess.run([BIN, *args], cwd=REPO, capture_output=True, check=False)
    if not done.stdout:
        raise BookrecError(done.stderr.decode(errors="replace"))
    return json.loads(done.stdout)


def runs(last: int = 10) -> list:
    """`bookrec runs --json`: the recorded batch runs, newest first."""
    return json.loads(run("runs", "--last", str(last), "--json"))


def models() -> pd.DataFrame:
    """`bookrec model list`: the model versions, newest first."""
    lines = run("model", "list").decode().splitlines()
    return pd.DataFrame([json.loads(line) for line in lines if line.strip()])
