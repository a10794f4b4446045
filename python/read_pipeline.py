#!/usr/bin/env python3
"""Read the store written by `cargo run --example pipeline -- --dir DIR` with numpy.

Every entry is a pair `NAME.npy` + `NAME.meta.json`; the entry's user
attributes are the JSON object under `ndoffload_attrs` in the metadata
(see docs/format.md). Entries are read with `ndoffload_store.load` (next
to this file), which returns the array and the attributes of one and the
same version even while a writer replaces the entry. For each tile this
checks the data against the SHA-256 in its attributes and prints one JSON
object per line:

    python python/read_pipeline.py DIR

Exit status: 0 when every checksum matches, 1 otherwise.
"""

import hashlib
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import ndoffload_store  # noqa: E402


def entries(store):
    """(name, array mapped read-only, attributes) for every pair in `store`."""
    for name in ndoffload_store.keys(store):
        array, attrs = ndoffload_store.load(store, name)
        yield name, array, attrs


def main(argv):
    store = pathlib.Path(argv[1])
    bad = 0
    for name, a, attrs in entries(store):
        row = {"name": name, "dtype": a.dtype.str, "shape": list(a.shape), "attrs": attrs}
        if "sha256" in attrs:
            got = hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
            row["checksum_ok"] = got == attrs["sha256"]
            bad += not row["checksum_ok"]
        if name.endswith("_voxels"):
            row["voxels"] = int(a.shape[0])
        print(json.dumps(row))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
