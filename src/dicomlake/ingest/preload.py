"""Imported once by the fork server that starts ingest workers (``forkserver`` start method).

Workers are forked from a process that has already imported what every worker needs — the
reader, the row builder, pyarrow, pydicom and the dose extractors — so each worker starts
at once and shares those pages with its siblings instead of holding a private copy
(measured: unique memory per worker and start-up CPU both drop; see bench/ingest_bench.py).
``gc.freeze()`` moves the imported objects out of the collector's reach, so collections in
a worker do not write to (and so un-share) the pages they live on.

The fork server is a fresh single-threaded process, so forking from it is safe even though
the parent holds DuckDB's threads (plain ``fork`` from the parent would not be).
"""

from __future__ import annotations

import gc

import pyarrow as pa

import dicomlake.dicom.dataset  # pydicom, for the dose extractors
import dicomlake.extract.dose
import dicomlake.ingest.worker  # noqa: F401  (reader, rows, pyarrow)
from dicomlake.dicom.dictionary import lookup, private_vr
from dicomlake.lakeschema import REJECT_SCHEMA

lookup(0x00080018)  # load the data dictionaries before the fork, to share them too
private_vr(0x0009, "GEMS_IDEN_01", 0x01)
# pyarrow imports pandas (when installed) the first time it checks whether a value is a
# DataFrame, as in Schema.empty_table: 20 MiB of modules, imported here once for all workers
REJECT_SCHEMA.empty_table()
# Arrow's default pool (mimalloc) keeps freed pages for reuse; a worker's tables are small
# and short-lived, so the system allocator, which returns them, keeps workers smaller
pa.set_memory_pool(pa.system_memory_pool())
gc.collect()
gc.freeze()
