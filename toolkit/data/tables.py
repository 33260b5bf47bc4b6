"""Rows from columnar data: Parquet files, folders written by `datasets`' save_to_disk, and
Hugging Face hub datasets (read with the `datasets` library, which keeps its own cache).

Every row becomes a dict as a JSONL line would be, so toolkit.data.example_from_row reads them
all alike; a row's number (from 1) stands where a line number would. A ClassLabel column gives
its label names, not their indices."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from toolkit.errors import UserError

SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")  # what save_to_disk writes


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file() for m in SAVED_MARKERS)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def parquet_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, row) of a Parquet file, a batch at a time (bounded memory)."""
    # pyarrow (with datasets): imported on first use, not when this module loads
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        f = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"not a readable Parquet file: {_first_line(e)}", file=path) from None
    n = 0
    try:
        for batch in f.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                n += 1
                yield n, row
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"damaged Parquet file: {_first_line(e)}", file=path, line=n + 1) from None


def dataset_rows(ds) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, row) of a datasets.Dataset, with ClassLabel indices turned into names."""
    # datasets (pyarrow, pandas): imported on first use, not when this module loads
    from datasets import ClassLabel

    names = {k: f for k, f in ds.features.items() if isinstance(f, ClassLabel)}
    for n, row in enumerate(ds, 1):
        yield n, {k: names[k].int2str(v) if k in names and isinstance(v, int) and v >= 0 else v
                  for k, v in row.items()}


def saved_dataset(path: Path, split: str | None, *, where: dict):
    """A folder written by save_to_disk: a Dataset, or one split of a DatasetDict."""
    # datasets (pyarrow, pandas): imported on first use, not when this module loads
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 -- any failure of a damaged folder is the user's input
        raise UserError(f"not a readable saved dataset: {_first_line(e)}", file=path) from None
    if isinstance(ds, datasets.DatasetDict):
        if split is None or split not in ds:
            raise UserError(f"this folder holds the splits {', '.join(ds)}: say which one with `split:`"
                            + (f" ('{split}' is not one of them)" if split else ""), **where)
        return ds[split]
    if split is not None:
        raise UserError("this folder holds one dataset, not a DatasetDict: leave `split:` out", **where)
    return ds


def hub_dataset(name: str, config: str | None, split: str | None, revision: str | None, *, where: dict):
    """datasets.load_dataset(name, config, split=..., revision=...), or a one-line UserError:
    an unknown id, a missing split, or no network and nothing in the datasets cache."""
    # datasets (pyarrow, pandas): imported on first use, not when this module loads
    import datasets

    if not split:
        raise UserError(f"the Hugging Face dataset '{name}' needs `split:` (e.g. train, or test[:500])", **where)
    quiet = [logging.getLogger(n) for n in ("huggingface_hub", "datasets", "fsspec")]
    levels = [q.level for q in quiet]
    try:
        for q in quiet:  # the hub client logs every retry: the error below is the one line
            q.setLevel(logging.ERROR)
        return datasets.load_dataset(name, config, split=split, revision=revision)
    except Exception as e:  # noqa: BLE001 -- the hub, the cache and the dataset's own script fail many ways
        offline = "offline" in str(e).lower() or isinstance(e, ConnectionError)
        reason = ("no network (offline) and it is not in the datasets cache" if offline
                  else f"{type(e).__name__}: {_first_line(e)}")
        raise UserError(f"cannot load the Hugging Face dataset '{name}'"
                        + (f" (config {config})" if config else "") + f": {reason}", **where) from None
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
