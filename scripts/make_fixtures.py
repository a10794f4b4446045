#!/usr/bin/env python3
"""Generate the numpy-written fixtures the integration tests read.

Run with numpy 2.x:  python scripts/make_fixtures.py
Writes tests/fixtures/npy/*.npy (one file per dtype x layout case),
tests/fixtures/npy/manifest.json (name -> dtype, shape, fortran_order, sha256
of the C-order bytes), a store directory tests/fixtures/store_numpy/ laid out
as docs/format.md describes, and a set of malformed files
tests/fixtures/bad/*.npy.
"""
import hashlib
import json
import os
import shutil
import sys

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")


def sha(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def cases():
    rng = np.random.default_rng(20261122)
    dtypes = ["?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f4", "f8", "c8", "c16"]
    for dt in dtypes:
        dtype = np.dtype(dt).newbyteorder("<") if np.dtype(dt).itemsize > 1 else np.dtype(dt)
        if dtype.kind == "b":
            base = rng.integers(0, 2, size=(3, 4, 5)).astype(bool)
        elif dtype.kind == "c":
            base = (rng.standard_normal((3, 4, 5)) + 1j * rng.standard_normal((3, 4, 5))).astype(dtype)
        elif dtype.kind == "f":
            base = rng.standard_normal((3, 4, 5)).astype(dtype)
        else:
            info = np.iinfo(dtype)
            base = rng.integers(info.min, info.max, size=(3, 4, 5), dtype=dtype, endpoint=True)
        tag = dtype.str.replace("<", "le_").replace("|", "na_")
        yield f"{tag}_c3d", base
        yield f"{tag}_f3d", np.asfortranarray(base)
        yield f"{tag}_0d", base[1, 2, 3].reshape(())
        yield f"{tag}_empty", base[:0]
        yield f"{tag}_1d", base.reshape(-1)
        yield f"{tag}_f2d", np.asfortranarray(base[0])


def main():
    npy_dir = os.path.join(ROOT, "npy")
    shutil.rmtree(npy_dir, ignore_errors=True)
    os.makedirs(npy_dir)
    manifest = {}
    for name, a in cases():
        np.save(os.path.join(npy_dir, name + ".npy"), a, allow_pickle=False)
        manifest[name] = {
            "dtype": a.dtype.str,
            "shape": list(a.shape),
            "fortran_order": bool(a.flags.f_contiguous and not a.flags.c_contiguous),
            "sha256": sha(a),
        }
    with open(os.path.join(npy_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)

    # A store directory as GSEGUtils 0.6.0 writes it (FORMAT.md).
    store = os.path.join(ROOT, "store_numpy")
    shutil.rmtree(store, ignore_errors=True)
    os.makedirs(store)
    rng = np.random.default_rng(7)
    entries = {
        "points": rng.standard_normal((100, 3)).astype("<f8"),
        "intensity": rng.integers(0, 65535, size=100, dtype="<u2"),
        "labels": rng.integers(0, 2, size=100).astype(bool),
        "scalar": np.array(3.5, dtype="<f4"),
        "raster": np.asfortranarray(rng.standard_normal((8, 6)).astype("<f4")),
        ".hidden": np.arange(4, dtype="<i8"),
    }
    store_manifest = {}
    for key, a in entries.items():
        np.save(os.path.join(store, key + ".npy"), a, allow_pickle=False)
        meta = {
            "schema_version": 1,
            "lazy_disk_cache_class": "DiskBackedNDArray",
            "shape": list(a.shape),
            "dtype": a.dtype.str,
            "purge_disk_on_gc": True,
            "automatic_offloading": False,
            "enable_caching": True,
        }
        with open(os.path.join(store, key + ".meta.json"), "w") as f:
            f.write(json.dumps(meta))
        store_manifest[key] = {"dtype": a.dtype.str, "shape": list(a.shape), "sha256": sha(a)}
    # Files a reader must ignore.
    with open(os.path.join(store, "points.pkl"), "wb") as f:
        f.write(b"\x80\x04not a pickle to load")
    with open(os.path.join(store, "notes.txt"), "w") as f:
        f.write("not part of the store\n")
    with open(os.path.join(ROOT, "store_numpy.manifest.json"), "w") as f:
        json.dump(store_manifest, f, indent=1, sort_keys=True)
    print(f"wrote {len(manifest)} npy fixtures and a {len(entries)}-entry store under {ROOT}")


if __name__ == "__main__":
    sys.exit(main())
