"""The product catalog: ``image_data.json`` records mapping ``imageName`` to ``productId``.

The file may be a JSON list of records, one record per line (the reference's format), or
one JSON object mapping image names to product ids (``{"a.jpg": "p1", ...}``).
``imageName`` may be a path relative to ``image_dir``, a bare file name, or a file name
without its extension (as the reference matched it); each entry is matched at the most
specific level that points at exactly one image. Absolute paths, or paths under another
root folder, fall back to their file name; letter case is ignored as a last resort.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from .runfolder import CATALOG

ON_MISSING = ("error", "skip", "filename")


class CatalogError(ValueError):
    """The catalog and the image folder do not fit together."""


@dataclass
class CatalogMatch:
    """Result of matching image files against catalog entries."""

    product_id: dict[str, str]  # relative path -> productId (images to embed)
    image_name: dict[str, str]  # relative path -> imageName as written in the catalog
    images_without_entry: list[str] = field(default_factory=list)
    entries_without_image: list[str] = field(default_factory=list)
    duplicate_names: list[str] = field(default_factory=list)  # same imageName, other productId
    ambiguous_names: list[str] = field(default_factory=list)  # matches several images

    def summary(self) -> dict:
        return {
            "images_matched": sum(1 for p in self.image_name if p in self.product_id),
            "images_without_entry": len(self.images_without_entry),
            "entries_without_image": len(self.entries_without_image),
            "duplicate_names": len(self.duplicate_names),
            "ambiguous_names": len(self.ambiguous_names),
        }


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]} is not finite")
    return value


def _constant(name: str):
    raise ValueError(f"{name} is not a number a catalog can hold")


def _loads(text: str, path: Path, place: str):
    """``json.loads`` for a catalog: NaN, Infinity, 1e999, integers past Python's digit limit
    and nesting too deep for the parser are CatalogErrors naming the record, never ids."""
    try:
        return json.loads(text, parse_float=_number, parse_constant=_constant)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise CatalogError(f"{path}, {place}: nested too deeply to read; records are flat "
                           "{\"imageName\": ..., \"productId\": ...} objects") from None
    except ValueError as exc:  # non-finite numbers, or an integer of thousands of digits
        raise CatalogError(f"{path}, {place}: {exc}; write product ids as strings") from None


def read_catalog(path: str | Path) -> pd.DataFrame:
    """Read ``image_data.json`` into a frame with columns imageName, productId (strings)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8-sig")
    stripped = text.lstrip()
    records = []
    mapping = _plain_mapping(stripped, path)
    if mapping is not None:  # {"imageName": "productId", ...}
        nested = next((name for name, pid in mapping.items() if isinstance(pid, (dict, list))), None)
        if nested is not None:
            raise CatalogError(f"{path}: key {nested!r} holds a {type(mapping[nested]).__name__}; expected "
                               "JSON lines or a list of {\"imageName\": ..., \"productId\": ...} records, "
                               "or one object mapping image names to product ids")
        records = [{"imageName": name, "productId": pid} for name, pid in mapping.items()]
        where = [f"key {name!r}" for name in mapping]
    elif stripped.startswith("["):
        try:
            records = _loads(stripped, path, "the list")
        except json.JSONDecodeError as exc:
            raise CatalogError(f"{path}: not valid JSON ({exc})") from None
        where = [f"record {i + 1}" for i in range(len(records))]
    else:
        where = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(_loads(line, path, f"line {number}"))
            except json.JSONDecodeError as exc:
                raise CatalogError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
            where.append(f"line {number}")
    rows = []
    for record, place in zip(records, where):
        if not isinstance(record, dict) or "imageName" not in record or "productId" not in record:
            raise CatalogError(
                f"{path}, {place}: every record needs 'imageName' and 'productId'; got {record!r:.120}"
            )
        if record["productId"] is None or str(record["productId"]).strip() == "":
            raise CatalogError(f"{path}, {place}: empty productId for {record['imageName']!r}")
        rows.append((str(record["imageName"]).strip(), str(record["productId"]).strip()))
    return pd.DataFrame(rows, columns=["imageName", "productId"])


def _plain_mapping(text: str, path: Path) -> dict | None:
    """The file as one JSON object of image name -> product id, or None when it is not that
    (a list, JSON lines, or a single record with imageName / productId keys)."""
    if not text.startswith("{"):
        return None
    try:
        whole = _loads(text, path, "the object")
    except (json.JSONDecodeError, CatalogError):  # several lines (JSON lines), or said there by line
        return None
    if not isinstance(whole, dict) or {"imageName", "productId"} & set(whole):
        return None
    return whole


LEVELS = 4  # relative path, file name, name without extension, name cut at the first dot


def _keys(rel_path: str) -> list[tuple[int, str]]:
    """Names by which an image may be referred to, most specific first; levels 4-7 are the
    same names in lower case (catalogs scraped on case-insensitive systems)."""
    name = PurePosixPath(rel_path).name
    keys = [(0, rel_path), (1, name), (2, name.rsplit(".", 1)[0])]
    if "." in name.split(".", 1)[1]:  # the reference cut names at the first dot
        keys.append((3, name.split(".", 1)[0]))
    return keys + [(level + LEVELS, key.lower()) for level, key in keys]


def _images_named(index: dict, name: str) -> list[str] | None:
    """The images an imageName points at: as written, then by its last component (absolute
    paths, another root folder), then either of those in another letter case."""
    name_key = name.replace("\\", "/")
    while name_key.startswith("./"):
        name_key = name_key[2:]
    tries = [(level, name_key) for level in range(LEVELS)]
    base = PurePosixPath(name_key).name
    if base != name_key:
        tries += [(level, base) for level in (1, 2, 3)]
    tries += [(level + LEVELS, key.lower()) for level, key in tries]
    return next((index[attempt] for attempt in tries if index.get(attempt)), None)


def _problems(result: CatalogMatch) -> list[str]:
    problems = []
    if result.images_without_entry:
        problems.append(f"{len(result.images_without_entry)} images have no productId "
                        f"(first: {result.images_without_entry[0]})")
    if result.duplicate_names:
        problems.append(f"{len(result.duplicate_names)} imageNames are listed with different "
                        f"productIds (first: {result.duplicate_names[0]}; the first entry is kept)")
    if result.ambiguous_names:
        problems.append(f"{len(result.ambiguous_names)} imageNames match several images "
                        f"(first: {result.ambiguous_names[0]}; write the path relative to image_dir)")
    return problems


def match_catalog(paths: list[str], catalog: pd.DataFrame | None, on_missing: str = "error",
                  source: str = CATALOG) -> CatalogMatch:
    """Assign a productId to every image path; raise CatalogError when ``on_missing='error'``.

    on_missing: "error" (stop before any work is done), "skip" (leave unlisted images out)
    or "filename" (use the relative path as productId).
    """
    if on_missing not in ON_MISSING:
        raise ValueError(f"on_missing={on_missing!r}; choose one of {ON_MISSING}")
    if catalog is None:
        return CatalogMatch({p: p for p in paths}, {p: p for p in paths})

    index: dict[tuple[int, str], list[str]] = defaultdict(list)
    for p in paths:
        for level, key in _keys(p):
            index[(level, key)].append(p)

    product_id: dict[str, str] = {}
    image_name: dict[str, str] = {}
    result = CatalogMatch(product_id, image_name)
    for name, pid in catalog.itertuples(index=False):
        hits = _images_named(index, name)
        if hits is None:
            result.entries_without_image.append(name)
            continue
        if len(hits) > 1:
            result.ambiguous_names.append(name)
            continue
        (path,) = hits
        if path in product_id:
            if product_id[path] != pid:
                result.duplicate_names.append(name)
            continue
        product_id[path] = pid
        image_name[path] = name

    result.images_without_entry = [p for p in paths if p not in product_id]
    problems = _problems(result)
    if problems and on_missing == "error":
        raise CatalogError(f"{source}: " + "; ".join(problems)
                           + ". Fix the catalog, or pass on_missing='skip' or 'filename'")
    if on_missing == "filename":
        for p in result.images_without_entry:
            product_id[p] = p
            image_name[p] = p
    return result
