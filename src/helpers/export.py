"""Export a run's neighbours where apps read them: SQLite, PostgreSQL, Elasticsearch/OpenSearch.

    python -m helpers.export outputs/sample --sqlite            # outputs/sample/neighbors.sqlite
    python -m helpers.export outputs/sample --postgres "host=... dbname=... user=..."
    python -m helpers.export outputs/sample --elasticsearch     # outputs/sample/elasticsearch/

Schema (SQLite and PostgreSQL): ``products(product_id, image_path, n_images)``,
``neighbors(master_pi, rank, similar_pi, similarity)`` keyed by (master_pi, rank) so
"similar products of X" is one indexed query, ``duplicate_groups(product_id, group_id, keeper,
keeper_product_id, group_size, min_similarity, max_similarity)`` (03's near-duplicate groups)
and ``run_meta(key, value)``. Elasticsearch documents carry ``duplicate_group``.
Every load is one transaction that replaces the previous run's rows (products gone from the
catalog disappear): readers see the old rows or the new ones, and a failed load leaves the
previous data intact. A database
written from another model (or embedding size) is refused, as is a table with another schema.
"""
from __future__ import annotations

import argparse
import json
import re
import sqlite3
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from . import runfolder, store
from .options import EmbeddingOptions

SCHEMA = {
    "products": [("product_id", "TEXT"), ("image_path", "TEXT"), ("n_images", "INTEGER")],
    "neighbors": [("master_pi", "TEXT"), ("rank", "INTEGER"), ("similar_pi", "TEXT"),
                  ("similarity", "DOUBLE PRECISION")],
    "run_meta": [("key", "TEXT"), ("value", "TEXT")],
    # 03's near-duplicate groups: one row per product in a group
    "duplicate_groups": [("product_id", "TEXT"), ("group_id", "TEXT"), ("keeper", "INTEGER"),
                         ("keeper_product_id", "TEXT"), ("group_size", "INTEGER"),
                         ("min_similarity", "DOUBLE PRECISION"), ("max_similarity", "DOUBLE PRECISION")],
}
KEYS = {"products": "product_id", "neighbors": "master_pi, rank", "run_meta": "key", "duplicate_groups": "product_id"}
# run_meta keys that must agree for a database to take this run's rows
COMPATIBLE = ("model_handle", "dim", "resize", "pooling", "focus", "hog_weight", "postprocess", "adapt")


class ExportError(RuntimeError):
    """The export cannot go ahead; nothing was written."""


def export_tables(run_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(products, neighbors, run_meta) ready to load, from 01's store and 03's output."""
    run_dir = Path(run_dir)
    try:
        runfolder.check_current(run_dir, "neighbors", "export")
    except (FileNotFoundError, runfolder.StaleError) as exc:
        raise ExportError(str(exc)) from None
    _, items, meta = store.load_store(run_dir)
    table = pd.read_parquet(run_dir / runfolder.NEIGHBORS)
    if table.duplicated(["master_pi", "rank"]).any():
        raise ExportError(f"{run_dir}: several images of one product are masters (level='image'); "
                          "re-run 03 with level='product' to export")
    products = (items.groupby("productId", sort=False)
                .agg(image_path=("path", "first"), n_images=("path", "size"))
                .reset_index().rename(columns={"productId": "product_id"}))
    neighbors = table[["master_pi", "rank", "similar_pi", "similarity"]].copy()
    if neighbors.isna().any().any():
        raise ExportError(f"{run_dir}: neighbors.parquet has {int(neighbors.isna().any(axis=1).sum())} rows "
                          "with missing values; re-run 03_neighbors")
    neighbors["rank"] = neighbors["rank"].astype(int)
    neighbors["similarity"] = neighbors["similarity"].astype(float)
    options = EmbeddingOptions(**meta["options"])
    run_meta = {"model_handle": options.model_handle, "dim": str(meta["dim"]), "resize": options.resize,
                "pooling": options.resolved_pooling, "focus": options.focus, "hog_weight": str(options.hog_weight),
                "precision": options.precision, "postprocess": options.postprocess, "adapt": options.adapt,
                "store_key": meta["computed_from"]["store_key"], "run_dir": str(run_dir.resolve()), "products": str(len(products)),
                "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return products, neighbors, run_meta


def duplicate_group_table(run_dir: str | Path) -> pd.DataFrame:
    """03's duplicate_groups.csv in the export's columns (empty when 03 wrote none)."""
    path = Path(run_dir) / runfolder.DUPLICATE_GROUPS
    columns = [c for c, _ in SCHEMA["duplicate_groups"]]
    if not path.exists():
        return pd.DataFrame(columns=columns)
    found = pd.read_csv(path, dtype={"product_id": str, "keeper_product_id": str, "group_id": str},
                        keep_default_na=False)
    found["keeper"] = found["keeper"].astype(bool).astype(int)
    return found[columns]


def _check_compatible(existing: dict, run_meta: dict, where: str) -> None:
    clash = {k: (existing[k], run_meta[k]) for k in COMPATIBLE if k in existing and existing[k] != run_meta[k]}
    if clash:
        detail = ", ".join(f"{k}: {a!r} there, {b!r} here" for k, (a, b) in clash.items())
        raise ExportError(f"{where} holds neighbours from another run setup ({detail}); "
                          "export to a new database, or drop its tables first")


def _check_columns(found: dict[str, list[str]], where: str) -> None:
    for table, columns in SCHEMA.items():
        want = [c for c, _ in columns]
        if table in found and found[table] != want:
            raise ExportError(f"{where}: table {table} has columns {found[table]}, expected {want}; "
                              "export to a new database, or drop the table first")


def _create_sql(sqlite: bool) -> list[str]:
    statements = []
    for table, columns in SCHEMA.items():
        cols = ", ".join(f"{c} {'REAL' if sqlite and t == 'DOUBLE PRECISION' else t} NOT NULL"
                         if c != "image_path" else f"{c} {t}" for c, t in columns)
        statements.append(f"CREATE TABLE IF NOT EXISTS {table} ({cols}, PRIMARY KEY ({KEYS[table]}))")
    statements.append("CREATE INDEX IF NOT EXISTS neighbors_similar_pi ON neighbors (similar_pi)")
    return statements


# --- SQLite ---------------------------------------------------------------------------


def to_sqlite(run_dir: str | Path, path: str | Path | None = None) -> Path:
    """Load the run into a SQLite file (default ``run_dir/neighbors.sqlite``, the run's own copy,
    which follows the run even when its embedding options changed; any other file refuses
    neighbours of another run setup)."""
    products, neighbors, run_meta = export_tables(run_dir)
    own = path is None
    path = Path(path) if path else Path(run_dir) / runfolder.SQLITE
    con = sqlite3.connect(path)
    try:
        found = {t: [r[1] for r in con.execute(f"PRAGMA table_info({t})")] for t in SCHEMA}
        _check_columns({t: c for t, c in found.items() if c}, str(path))
        if found["run_meta"] and not own:
            _check_compatible(dict(con.execute("SELECT key, value FROM run_meta")), run_meta, str(path))
        with con:  # one transaction: all or nothing
            for sql in _create_sql(sqlite=True):
                con.execute(sql)
            con.execute("DELETE FROM neighbors")  # readers see the old rows until commit
            con.execute("DELETE FROM products")
            con.execute("DELETE FROM duplicate_groups")
            con.executemany("INSERT INTO duplicate_groups VALUES (?, ?, ?, ?, ?, ?, ?)",
                            duplicate_group_table(run_dir).itertuples(index=False, name=None))
            con.executemany("INSERT INTO products VALUES (?, ?, ?)", products.itertuples(index=False, name=None))
            con.executemany("INSERT INTO neighbors VALUES (?, ?, ?, ?)",
                            neighbors.itertuples(index=False, name=None))
            con.execute("DELETE FROM run_meta")
            con.executemany("INSERT INTO run_meta VALUES (?, ?)", run_meta.items())
    finally:
        con.close()
    return path


# --- PostgreSQL -----------------------------------------------------------------------


def to_postgres(run_dir: str | Path, dsn: str) -> dict:
    """Load the run into PostgreSQL with COPY, in one transaction; return row counts."""
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - psycopg is a dependency
        raise ExportError("psycopg is not installed: pip install 'psycopg[binary]'") from exc
    products, neighbors, run_meta = export_tables(run_dir)
    try:
        con = psycopg.connect(dsn, connect_timeout=10)
    except psycopg.Error as exc:
        raise ExportError(f"cannot connect to PostgreSQL ({redact(str(exc).strip(), dsn)}); check the connection "
                          "string, e.g. 'host=localhost port=5432 dbname=shop user=app'") from None
    where = f"PostgreSQL {con.info.dbname}@{con.info.host}"
    try:
        with con.transaction():
            cur = con.cursor()
            cur.execute("SELECT table_name, column_name FROM information_schema.columns "
                        "WHERE table_schema = current_schema() AND table_name = ANY(%s) "
                        "ORDER BY table_name, ordinal_position", (list(SCHEMA),))
            found: dict[str, list[str]] = {}
            for table, column in cur.fetchall():
                found.setdefault(table, []).append(column)
            _check_columns(found, where)
            if "run_meta" in found:
                cur.execute("SELECT key, value FROM run_meta")
                _check_compatible(dict(cur.fetchall()), run_meta, where)
            for sql in _create_sql(sqlite=False):
                cur.execute(sql)
            # the run's rows replace the old ones; other sessions see the old rows until commit
            cur.execute("DELETE FROM neighbors")
            cur.execute("DELETE FROM products")
            cur.execute("DELETE FROM duplicate_groups")
            _copy(cur, "products", products)
            _copy(cur, "duplicate_groups", duplicate_group_table(run_dir))
            _copy(cur, "neighbors", neighbors)
            cur.execute("DELETE FROM run_meta")
            cur.executemany("INSERT INTO run_meta VALUES (%s, %s)", list(run_meta.items()))
    finally:
        con.close()
    return {"products": len(products), "neighbors": len(neighbors),
            "duplicate_groups": int(duplicate_group_table(run_dir)["group_id"].nunique())}


def redact(text: str, dsn: str) -> str:
    """``text`` without the password of ``dsn``, whatever shape the connection string has:
    ``password=...`` (quoted, or words up to the next ``key=``) and ``scheme://user:password@``.
    A malformed string's error echoes pieces of it (``missing "=" after "PW"``)."""
    secrets = [re.sub(r"\\(.)", r"\1", m.group(1)) if m.group(1) else m.group(2) for m in
               re.finditer(r"password\s*=\s*(?:'((?:[^'\\]|\\.)*)'|(\S+(?:\s+(?!\w+\s*=)\S+)*))", dsn)]
    secrets += re.findall(r"://[^:/@\s]*:([^@\s]*)@", dsn)
    words = {w for secret in secrets if secret for w in [secret, *secret.split()] if len(w) >= 2}
    for word in sorted(words, key=len, reverse=True):
        text = text.replace(word, "***")
    return text


def _copy(cur, table: str, frame: pd.DataFrame) -> None:
    with cur.copy(f"COPY {table} FROM STDIN") as copy:
        for row in frame.itertuples(index=False, name=None):
            copy.write_row(row)


# --- Elasticsearch / OpenSearch -------------------------------------------------------


def elasticsearch_mapping(dim: int) -> dict:
    """Index mapping: similar products as nested objects, the embedding as a dense_vector."""
    return {"mappings": {"properties": {
        "product_id": {"type": "keyword"},
        "image_path": {"type": "keyword"},
        "n_images": {"type": "integer"},
        "similar": {"type": "nested", "properties": {
            "product_id": {"type": "keyword"},
            "rank": {"type": "integer"},
            "similarity": {"type": "float"}}},
        "duplicate_group": {"type": "object", "properties": {
            "group_id": {"type": "keyword"}, "keeper": {"type": "boolean"},
            "keeper_product_id": {"type": "keyword"}}},
        "embedding": {"type": "dense_vector", "dims": dim, "index": True, "similarity": "cosine"},
    }}}


def to_elasticsearch(run_dir: str | Path, index_name: str = "lookalike", folder: str | Path | None = None) -> Path:
    """Write ``mapping.json`` and a bulk ``products.ndjson`` (one document per product).

    A product's embedding is the vector of its first image.
    """
    run_dir = Path(run_dir)
    products, neighbors, _ = export_tables(run_dir)
    embeddings, items, meta = store.load_store(run_dir)
    first_row = items.drop_duplicates("productId").set_index("productId")["row"]
    folder = Path(folder) if folder else run_dir / runfolder.ELASTICSEARCH
    folder.mkdir(parents=True, exist_ok=True)
    runfolder.write_json(folder / runfolder.ES_MAPPING, elasticsearch_mapping(int(embeddings.shape[1])))
    similar = {m: g for m, g in neighbors.groupby("master_pi", sort=False)}
    groups = duplicate_group_table(run_dir).set_index("product_id")
    with runfolder.atomic_path(folder / runfolder.ES_DOCUMENTS) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for product in products.itertuples(index=False):
            group = similar.get(product.product_id)
            doc = {
                "product_id": product.product_id, "image_path": product.image_path,
                "n_images": int(product.n_images),
                "similar": [] if group is None else [
                    {"product_id": s, "rank": int(r), "similarity": float(v)}
                    for s, r, v in zip(group["similar_pi"], group["rank"], group["similarity"])],
                "embedding": [round(float(x), 6) for x in np.asarray(embeddings[first_row[product.product_id]])],
            }
            if product.product_id in groups.index:
                g = groups.loc[product.product_id]
                doc["duplicate_group"] = {"group_id": g["group_id"], "keeper": bool(g["keeper"]),
                                          "keeper_product_id": g["keeper_product_id"]}
            f.write(json.dumps({"index": {"_index": index_name, "_id": product.product_id}}) + "\n")
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    (folder / runfolder.ES_README).write_text(
        "Create the index, then post the documents:\n"
        f"  curl -XPUT 'localhost:9200/{index_name}' -H 'Content-Type: application/json' -d @{runfolder.ES_MAPPING}\n"
        "  curl -XPOST 'localhost:9200/_bulk' -H 'Content-Type: application/x-ndjson' "
        f"--data-binary @{runfolder.ES_DOCUMENTS}\n", encoding="utf-8")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export a run's neighbours (see module docstring).")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--sqlite", nargs="?", const="", metavar="PATH", help="SQLite file (default in run_dir)")
    parser.add_argument("--postgres", metavar="DSN", help="PostgreSQL connection string")
    parser.add_argument("--elasticsearch", nargs="?", const="lookalike", metavar="INDEX",
                        help="write an Elasticsearch/OpenSearch bulk file (index name)")
    args = parser.parse_args(argv)
    if args.sqlite is None and not args.postgres and not args.elasticsearch:
        args.sqlite = ""
    try:
        if args.sqlite is not None:
            print(f"sqlite: {to_sqlite(args.run_dir, args.sqlite or None)}")
        if args.postgres:
            print(f"postgres: {to_postgres(args.run_dir, args.postgres)}")
        if args.elasticsearch:
            print(f"elasticsearch: {to_elasticsearch(args.run_dir, args.elasticsearch)}")
    except ExportError as exc:
        print(f"export failed, nothing written: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
