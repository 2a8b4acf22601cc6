"""A finished batch's output: Parquet converted from the rows file, and the upload of either to
an object store.

Parquet (pyarrow, the `parquet` extra) has one row per source in index order, with the columns
`index`, `id`, `source`, `state`, `result` (the result object as JSON text, null for a failure),
`error_type` and `error_message` (null for a success). It is written to a temporary file beside
the destination and renamed over it: a reader never sees half a file. An object-store output
is uploaded whole once every row is written (core.objects.put_bytes); the local files stay
until the upload succeeded.
"""

from __future__ import annotations

import json
import os
import re
from array import array
from pathlib import Path
from typing import Any

from core.errors import BatchConflict, ConfigError

_ROW_GROUP = 65_536
_INDEX = re.compile(rb'^\{"id": "[^"\\]*-(\d+)"')
COLUMNS = ("index", "id", "source", "state", "result", "error_type", "error_message")


def check_parquet() -> None:
    """ConfigError naming the extra where pyarrow is missing: said before any job is sent."""
    try:
        import pyarrow.parquet  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        raise ConfigError(
            "a .parquet output needs pyarrow: pip install 'imgqueue[parquet]' (or write .jsonl)"
        ) from None


def to_parquet(rows: Path, dest: Path, total: int) -> None:
    """The rows file as Parquet at `dest`, sorted by index, `_ROW_GROUP` rows at a time (only
    each row's offset is held for all of them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    offsets = array("q", [-1]) * total
    with rows.open("rb") as source:
        position = 0
        for line in source:
            found = _INDEX.match(line)
            if found is None or int(found.group(1)) >= total:
                raise BatchConflict(f"{rows}: a row that is not one of the batch's sources")
            offsets[int(found.group(1))] = position
            position += len(line)
    missing = [i for i in range(total) if offsets[i] < 0][:5]
    if missing:
        raise BatchConflict(f"{rows}: no row for source(s) {missing}: resume the batch first")
    schema = pa.schema([(name, pa.int64() if name == "index" else pa.string()) for name in COLUMNS])
    partial = dest.with_name(dest.name + ".partial")
    with rows.open("rb") as source, pq.ParquetWriter(partial, schema) as writer:
        for start in range(0, total, _ROW_GROUP):
            columns: dict[str, list[Any]] = {name: [] for name in COLUMNS}
            for index in range(start, min(total, start + _ROW_GROUP)):
                source.seek(offsets[index])
                _add(columns, index, json.loads(source.readline()))
            writer.write_table(pa.table(columns, schema=schema))
    os.replace(partial, dest)


def _add(columns: dict[str, list[Any]], index: int, row: dict[str, Any]) -> None:
    error = row.get("error") or {}
    result = row.get("result")
    columns["index"].append(index)
    columns["id"].append(row.get("id"))
    columns["source"].append(row.get("source"))
    columns["state"].append(row.get("state"))
    columns["result"].append(None if result is None else json.dumps(result))
    columns["error_type"].append(error.get("type"))
    columns["error_message"].append(error.get("message"))


def upload(url: str, path: Path) -> None:
    """The file, whole, as the object at `url` (an existing one is replaced)."""
    from core import objects

    objects.put_bytes(url, path.read_bytes())


def object_exists(url: str) -> bool:
    """Whether there is an object at `url` (a HEAD request); the store's errors as
    core.objects raises them."""
    from core import objects

    location = objects.parse(url)
    store = objects.store_for(location, objects.StoreOptions.from_env())
    import obstore

    try:
        obstore.head(store, location.key)
    except FileNotFoundError:
        return False
    except Exception as exc:
        raise objects.producer_error(exc, location) from None
    return True
