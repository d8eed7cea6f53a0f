"""Record-stream corpora: JSONL (plain, ``.gz``, ``.zst``) and parquet files of documents.

Each record is one document: the string in its text field (``tokenize.text_field``, a JSON
key or a parquet column). The files are read in bounded pieces so a corpus of any size
streams through: :func:`jsonl_blobs` yields runs of whole lines (about ``target_bytes``
each) and :func:`parquet_batches` slices of the text column; :func:`jsonl_texts` and
:func:`arrow_texts` turn one piece into its documents (in a worker process). Records whose
text is null or whitespace only are skipped, as blank ``.txt`` files are.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import zstandard

from gptlab.errors import GptlabError

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
PARQUET_SUFFIXES = (".parquet",)
_FIELD_FIX = "set tokenize.text_field to the field that holds the text"


def is_record_file(path: str | Path) -> bool:
    """Return True when ``path`` names a JSONL or parquet file (one document per record)."""
    return str(path).endswith(JSONL_SUFFIXES + PARQUET_SUFFIXES)


def open_jsonl(path: str | Path) -> tuple[BinaryIO, BinaryIO]:
    """Open a JSONL file, decompressing ``.gz`` / ``.zst``; return (decompressed stream, raw file).

    The raw file's ``tell()`` says how far through the file on disk the reader is.
    """
    raw = open(path, "rb")
    name = str(path)
    if name.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw), raw
    if name.endswith(".zst"):
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True), raw
    return raw, raw


def jsonl_blobs(path: str | Path, target_bytes: int = 1 << 20) -> Iterator[tuple[int, bytes, int]]:
    """Yield ``(first line number, blob, raw bytes read so far)``: runs of whole lines of about
    ``target_bytes`` decompressed bytes each, in file order (line numbers count from 1)."""
    stream, raw = open_jsonl(path)
    line_no, carry = 1, b""
    try:
        reader = io.BufferedReader(stream, 1 << 20) if stream is not raw else stream
        while True:
            try:
                block = reader.read(target_bytes)
            except (OSError, EOFError, ValueError) as e:  # zstd/gzip errors of a damaged file
                raise GptlabError(f"{path}: cannot decompress ({e}); download the file again or remove it from the corpus") from None
            if not block:
                break
            block = carry + block
            cut = block.rfind(b"\n") + 1
            if cut == 0:
                carry = block
                continue
            carry = block[cut:]
            yield line_no, block[:cut], raw.tell()
            line_no += block.count(b"\n", 0, cut)
        if carry.strip():
            yield line_no, carry, raw.tell()
    finally:
        stream.close()
        raw.close()


def jsonl_texts(name: str, first_line: int, blob: bytes, field: str) -> list[str]:
    """Return the non-blank texts of the JSONL lines in ``blob`` (lines numbered from
    ``first_line``); GptlabError naming ``name:line`` for bad JSON or a missing text field.

    The blob is parsed as one JSON array (one C-level pass); only when that fails or a record
    is not a JSON object with a text (or null) field is it parsed line by line, to name the
    bad line.
    """
    body = blob.strip()
    try:
        records = json.loads(b"[" + body.replace(b"\n", b",") + b"]") if body else []
    except (json.JSONDecodeError, UnicodeDecodeError):  # a bad or blank line: find it below
        records = None
    if records is not None and all(type(r) is dict and field in r and (r[field] is None or type(r[field]) is str) for r in records):
        return [t for r in records if (t := r[field]) and t.strip()]
    texts = []
    for i, line in enumerate(blob.split(b"\n")):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise GptlabError(f"{name}:{first_line + i}: not a JSON record ({e}); fix or remove that line") from None
        text = record.get(field) if isinstance(record, dict) else None
        if text is None and not (isinstance(record, dict) and field in record):
            keys = ", ".join(sorted(record)[:8]) if isinstance(record, dict) else type(record).__name__
            raise GptlabError(f"{name}:{first_line + i}: no {field!r} field (record has: {keys}); {_FIELD_FIX}")
        if text is not None and not isinstance(text, str):
            raise GptlabError(f"{name}:{first_line + i}: field {field!r} holds {type(text).__name__}, not text; {_FIELD_FIX}")
        if text and text.strip():
            texts.append(text)
    return texts


def parquet_batches(path: str | Path, field: str, target_bytes: int = 1 << 20) -> Iterator[tuple[int, object, float]]:
    """Yield ``(first row, text array, fraction of the file read)``: the ``field`` column of
    ``path`` read one row group at a time, sliced into pieces of about ``target_bytes``."""
    import pyarrow as pa  # pyarrow (slow to import): only for parquet corpora
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise GptlabError(f"{path}: not a readable parquet file ({e}); download it again or remove it from the corpus") from None
    names = pf.schema_arrow.names
    if field not in names:
        raise GptlabError(f"{path}: no column {field!r} (columns: {', '.join(names[:8])}); {_FIELD_FIX}")
    kind = pf.schema_arrow.field(field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        raise GptlabError(f"{path}: column {field!r} is {kind}, not text; {_FIELD_FIX}")
    rows_total, row = max(pf.metadata.num_rows, 1), 0
    for group in range(pf.num_row_groups):
        column = pf.read_row_group(group, columns=[field]).column(0)
        for chunk in column.chunks:
            sizes = pc.binary_length(chunk).fill_null(0).to_numpy(zero_copy_only=False)
            ends = np.cumsum(sizes)
            start = 0
            while start < len(chunk):
                base = ends[start - 1] if start else 0
                stop = max(start + 1, int(np.searchsorted(ends, base + target_bytes, side="right")))
                # concat_arrays copies the slice out: a bare slice would pickle its whole row group
                yield row + start, pa.concat_arrays([chunk.slice(start, stop - start)]), (row + stop) / rows_total
                start = stop
            row += len(chunk)
        del column


def arrow_texts(array: object) -> list[str]:
    """Return the non-null, non-blank strings of an arrow string array, in order."""
    return [t for t in array.to_pylist() if t and t.strip()]


def iter_record_texts(path: str | Path, field: str) -> Iterator[str]:
    """Yield the text of every non-blank record of a JSONL or parquet file, in order."""
    if str(path).endswith(PARQUET_SUFFIXES):
        for _, array, _ in parquet_batches(path, field):
            yield from arrow_texts(array)
    else:
        for first, blob, _ in jsonl_blobs(path):
            yield from jsonl_texts(Path(path).name, first, blob, field)
