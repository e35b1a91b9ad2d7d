"""The DuckDB writer's in-memory copy of ``instance_keys`` (store/keyindex.py) finds every
instance the lake holds: through a colliding key, another writer of the same lake and a file
copied under a second name, the lake holds each SOP Instance UID once, as pydicom reads them;
and the copy, past a merge, answers as numpy.isin does."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom

from dicomlake.ingest.pipeline import ingest_paths
from dicomlake.samples import repo_corpus
from dicomlake.store.duckdb import DuckDBStore
from dicomlake.store.keyindex import KeyIndex


def _rows(st: DuckDBStore) -> list[str]:
    return [r[0] for r in st.con.execute("SELECT SOPInstanceUID FROM instances").fetchall()]


def test_key_copy_finds_every_instance(tmp_path: Path) -> None:
    corpus = repo_corpus()
    assert corpus is not None
    files = sorted((corpus / "openrem").glob("*.dcm"))[:4]
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    assert len(set(uids)) == 4
    lake = tmp_path / "lake"
    with DuckDBStore(lake) as st:
        first = ingest_paths(files[:2], lake, workers=1, store=st)
        assert (first.inserted, first.replaced) == (2, 0)
        # a colliding key: instance_keys holds the hash of files[3]'s UID, the lake not the instance
        st.con.execute("INSERT INTO instance_keys VALUES (hash(?), 0, ?)", [uids[3], uids[3]])
        # another writer of the same lake adds files[2] behind this store's back
        with DuckDBStore(lake) as other:
            ingest_paths(files[2:3], lake, workers=1, store=other)
        # files[1] again, under a second name in the same run
        copy = tmp_path / "copy.dcm"
        shutil.copy(files[1], copy)
        rep = ingest_paths([*files, copy], lake, workers=1, store=st)
        # replaced: files[0], files[1], files[2] and the copy; files[3] is new despite its key
        assert (rep.inserted, rep.replaced) == (1, 4)
        assert sorted(_rows(st)) == sorted(uids)
    # a reopened writer reads the keys from the table: still nothing duplicated
    with DuckDBStore(lake) as st:
        again = ingest_paths(files, lake, workers=1, store=st)
        assert (again.inserted, again.replaced) == (0, 4)
        assert sorted(_rows(st)) == sorted(uids)

    # the copy itself, past a merge of its recent keys into the large array, against numpy's isin
    rng = np.random.default_rng(7)
    keys = rng.integers(0, 2**64 - 1, 100_000, dtype=np.uint64)
    idx = KeyIndex()
    for part in np.array_split(keys, 25):
        idx.add(part)
    assert len(idx) == keys.size and idx.main.size > 0
    edges = np.array([0, 2**64 - 1], dtype=np.uint64)
    probe = np.concatenate([keys[::997], rng.integers(0, 2**64 - 1, 500, dtype=np.uint64), edges])
    assert np.array_equal(idx.contains(probe), np.isin(probe, keys))
    assert idx.contains(keys[::997]).all()
