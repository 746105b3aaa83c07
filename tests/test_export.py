"""Exports round-trip exactly to nearest_neighbors.json, and bad input writes nothing."""
import json
import shutil
import sqlite3

import pandas as pd
import psycopg
import pytest

from helpers import export, runfolder, store
from helpers.features import HOG_DIM
from helpers.neighbors import write_neighbors


@pytest.fixture(scope="module")
def run_dir(tiny_run, tmp_path_factory):
    """A product-level copy of the tiny run (the tiny run itself is image level)."""
    source, _ = tiny_run
    target = tmp_path_factory.mktemp("export") / "run"
    shutil.copytree(source, target)
    write_neighbors(target, k=4, level="product")
    return target


def reference_rows(run_dir):
    records = json.loads((run_dir / "nearest_neighbors.json").read_text())
    rank, rows, last = 0, [], None
    for r in records:
        rank = rank + 1 if r["master_pi"] == last else 1
        last = r["master_pi"]
        rows.append((r["master_pi"], rank, r["similar_pi"], r["similarity"]))
    return sorted(rows)


def test_sqlite_round_trip_and_one_query_answer(run_dir):
    path = export.to_sqlite(run_dir)
    con = sqlite3.connect(path)
    rows = sorted(con.execute("SELECT master_pi, rank, similar_pi, similarity FROM neighbors"))
    assert rows == reference_rows(run_dir)
    master = rows[0][0]
    plan = " ".join(str(r) for r in con.execute(
        "EXPLAIN QUERY PLAN SELECT similar_pi FROM neighbors WHERE master_pi = ? ORDER BY rank", (master,)))
    assert "USING INDEX" in plan or "PRIMARY KEY" in plan  # answered from the key, no scan
    meta = dict(con.execute("SELECT key, value FROM run_meta"))
    assert meta["model_handle"] == "efficientnet-lite0" and meta["dim"] == str(1280 + HOG_DIM)
    n_products = con.execute("SELECT count(*) FROM products").fetchone()[0]
    assert n_products == store.load_items(run_dir)["productId"].nunique()
    export.to_sqlite(run_dir)  # re-export replaces, never duplicates
    assert sorted(sqlite3.connect(path).execute(
        "SELECT master_pi, rank, similar_pi, similarity FROM neighbors")) == rows


def test_the_runs_own_sqlite_follows_the_run_when_its_options_change(tiny_catalog, tmp_path):
    """03 writes run_dir/neighbors.sqlite on every run: re-embedding the same run folder with
    other options (here the outline off) replaces it instead of stopping 03."""
    from helpers.embed import embed_folder

    run = tmp_path / "run"
    embed_folder(tiny_catalog, run, catalog=tiny_catalog / "image_data.json", progress=False)
    write_neighbors(run, k=3)
    export.to_sqlite(run)
    embed_folder(tiny_catalog, run, catalog=tiny_catalog / "image_data.json", hog_weight=0.0, progress=False)
    write_neighbors(run, k=3)
    meta = dict(sqlite3.connect(export.to_sqlite(run)).execute("SELECT key, value FROM run_meta"))
    assert meta["dim"] == "1280" and meta["hog_weight"] == "0.0"
    shutil.copy(run / "neighbors.sqlite", tmp_path / "copy.sqlite")
    embed_folder(tiny_catalog, run, catalog=tiny_catalog / "image_data.json", progress=False)
    write_neighbors(run, k=3)
    with pytest.raises(export.ExportError, match="another run setup"):  # any other file still refuses
        export.to_sqlite(run, tmp_path / "copy.sqlite")


def test_sqlite_refuses_another_model_and_other_schema(run_dir, tmp_path):
    path = tmp_path / "other.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE run_meta (key TEXT PRIMARY KEY, value TEXT)")
    con.execute("INSERT INTO run_meta VALUES ('model_handle', 'efficientnet-lite2'), ('dim', '1280')")
    con.commit()
    with pytest.raises(export.ExportError, match="another run setup.*efficientnet-lite2"):
        export.to_sqlite(run_dir, path)
    assert [r[0] for r in con.execute("SELECT name FROM sqlite_master")] == ["run_meta", "sqlite_autoindex_run_meta_1"]
    bad = tmp_path / "bad.sqlite"
    con = sqlite3.connect(bad)
    con.execute("CREATE TABLE neighbors (a TEXT, b TEXT)")
    con.commit()
    with pytest.raises(export.ExportError, match="table neighbors has columns"):
        export.to_sqlite(run_dir, bad)


def test_image_level_runs_are_refused(tiny_run):
    source, _ = tiny_run
    table = pd.read_parquet(source / "neighbors.parquet")
    if table.duplicated(["master_pi", "rank"]).any():
        with pytest.raises(export.ExportError, match="level='product'"):
            export.export_tables(source)


def test_postgres_round_trip_atomic_reexport(run_dir, postgres_dsn, monkeypatch):
    with psycopg.connect(postgres_dsn, autocommit=True) as con:
        con.execute("DROP TABLE IF EXISTS neighbors, products, run_meta")
    counts = export.to_postgres(run_dir, postgres_dsn)
    with psycopg.connect(postgres_dsn) as con:
        rows = sorted(con.execute("SELECT master_pi, rank, similar_pi, similarity FROM neighbors").fetchall())
        assert rows == reference_rows(run_dir) and counts["neighbors"] == len(rows)
    # a load that dies half-way (after the products went in) rolls back: old rows intact
    real_copy = export._copy

    def dying_copy(cur, table, frame):
        if table == "neighbors":
            raise psycopg.OperationalError("connection lost in the middle of COPY")
        return real_copy(cur, table, frame)

    monkeypatch.setattr(export, "_copy", dying_copy)
    with pytest.raises(psycopg.OperationalError):
        export.to_postgres(run_dir, postgres_dsn)
    monkeypatch.setattr(export, "_copy", real_copy)
    with psycopg.connect(postgres_dsn) as con:
        assert sorted(con.execute("SELECT master_pi, rank, similar_pi, similarity FROM neighbors").fetchall()) == rows
        assert con.execute("SELECT count(*) FROM products").fetchone()[0] == counts["products"]
    # missing values are refused before anything is written
    broken = run_dir.parent / "broken"
    shutil.copytree(run_dir, broken)
    table = pd.read_parquet(broken / "neighbors.parquet")
    table.loc[len(table) - 1, "similar_pi"] = None
    runfolder.write_table(broken / "neighbors.parquet", table)
    with pytest.raises(export.ExportError, match="missing values"):
        export.to_postgres(broken, postgres_dsn)
    export.to_postgres(run_dir, postgres_dsn)  # re-export: same rows, not twice
    with psycopg.connect(postgres_dsn) as con:
        assert con.execute("SELECT count(*) FROM neighbors").fetchone()[0] == len(rows)


def test_postgres_bad_connection_and_other_model(run_dir, postgres_dsn):
    with pytest.raises(export.ExportError, match="cannot connect to PostgreSQL"):
        export.to_postgres(run_dir, "host=127.0.0.1 port=1 dbname=nope user=nobody connect_timeout=2")
    with psycopg.connect(postgres_dsn, autocommit=True) as con:
        con.execute("UPDATE run_meta SET value = '512' WHERE key = 'dim'")
        before = con.execute("SELECT count(*) FROM neighbors").fetchone()[0]
    with pytest.raises(export.ExportError, match="dim"):
        export.to_postgres(run_dir, postgres_dsn)
    with psycopg.connect(postgres_dsn, autocommit=True) as con:
        assert con.execute("SELECT count(*) FROM neighbors").fetchone()[0] == before
        con.execute("DROP TABLE neighbors, products, run_meta")
        con.execute("CREATE TABLE neighbors (product TEXT, score REAL)")
    with pytest.raises(export.ExportError, match="table neighbors has columns"):
        export.to_postgres(run_dir, postgres_dsn)
    with psycopg.connect(postgres_dsn, autocommit=True) as con:
        assert con.execute("SELECT to_regclass('products')").fetchone()[0] is None  # nothing written
        con.execute("DROP TABLE neighbors")


def _valid(value, spec):
    kind = spec["type"]
    if kind == "keyword":
        return isinstance(value, str)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "dense_vector":
        return len(value) == spec["dims"] and all(isinstance(x, float) for x in value)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "object":
        return isinstance(value, dict) and set(value) <= set(spec["properties"]) and all(
            _valid(v, spec["properties"][k]) for k, v in value.items())
    if kind == "nested":
        return isinstance(value, list) and all(
            set(v) <= set(spec["properties"]) and all(_valid(v[k], spec["properties"][k]) for k in v)
            for v in value)
    raise AssertionError(f"unknown mapping type {kind}")


def test_elasticsearch_bulk_file_matches_its_mapping(run_dir):
    folder = export.to_elasticsearch(run_dir, "shop")
    mapping = json.loads((folder / "mapping.json").read_text())["mappings"]["properties"]
    lines = (folder / "products.ndjson").read_text().splitlines()
    assert len(lines) % 2 == 0 and lines
    reference = {}
    for master, rank, similar, sim in reference_rows(run_dir):
        reference.setdefault(master, []).append((similar, rank, sim))
    for action, doc in zip(lines[::2], lines[1::2]):
        action, doc = json.loads(action), json.loads(doc)
        assert action == {"index": {"_index": "shop", "_id": doc["product_id"]}}
        assert set(doc) <= set(mapping)
        for field, value in doc.items():
            assert _valid(value, mapping[field]), field
        assert sorted((s["product_id"], s["rank"], s["similarity"]) for s in doc["similar"]) == \
            sorted(reference.get(doc["product_id"], []))
    assert "curl" in (folder / "README.txt").read_text()


def test_cli(run_dir, tmp_path, capsys):
    assert export.main([str(run_dir), "--sqlite", str(tmp_path / "x.sqlite"), "--elasticsearch"]) == 0
    assert (tmp_path / "x.sqlite").exists() and "elasticsearch" in capsys.readouterr().out
    assert export.main([str(tmp_path), "--sqlite"]) == 1


@pytest.mark.parametrize("dsn", ["host=127.0.0.1 port=1 password=S3cret PW user=app",
                                 "host=127.0.0.1 port=1 password='S3cret PW' connect_timeout=2",
                                 "postgresql://app:S3cret@127.0.0.1:1/shop?connect_timeout=2"])
def test_no_error_shows_the_password(run_dir, dsn, capsys):
    """A malformed string was echoed back: 'missing "=" after "PW"'."""
    with pytest.raises(export.ExportError) as err:
        export.to_postgres(run_dir, dsn)
    assert "cannot connect to PostgreSQL" in str(err.value)
    assert export.main([str(run_dir), "--postgres", dsn]) == 1
    shown = str(err.value) + capsys.readouterr().err
    assert "S3cret" not in shown and '"PW"' not in shown
