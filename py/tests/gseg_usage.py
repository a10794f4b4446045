"""Code written for GSEGUtils 0.6.0, following its documentation: the
store's mapping protocol, add_data_to_store, offload (both modes) and load of
entries, reopening the same directory. Run as

    python gseg_usage.py IMPL DIR PHASE

where IMPL is "gsegutils" (GSEGUtils itself) or "ndoffload" (the drop-in):
the only difference is the import below. It prints one line per check, so
the two outputs can be compared.
"""

import sys
from pathlib import Path

import numpy as np

impl, cache, phase = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
if impl == "gsegutils":
    from GSEGUtils.lazy_disk_cache import DiskBackedNDArray, DiskBackedStore, LazyDiskCacheConfig
else:
    from ndoffload.gsegutils import DiskBackedNDArray, DiskBackedStore, LazyDiskCacheConfig


def show(label, value):
    if isinstance(value, np.ndarray):
        value = (value.dtype.str, value.shape, np.round(value.astype(np.float64).ravel()[:6], 6).tolist())
    print(f"{label}: {value}")


config = LazyDiskCacheConfig(cache_path=cache, enable_caching=True)
store = DiskBackedStore(config=config, factory=DiskBackedNDArray, value_type=DiskBackedNDArray)

if phase == "write":
    rng = np.random.default_rng(7)
    xyz = rng.random((1000, 3))
    store.add_data_to_store("xyz", xyz)
    store.add_data_to_store("labels", np.arange(1000, dtype=np.uint8) % 7, automatic_offloading_override=False)
    store["intensity"] = DiskBackedNDArray(np.linspace(0, 1, 1000, dtype=np.float32), enable_caching=True)
    store.add_data_to_store("grid", np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4)))
    show("len", len(store))
    show("keys", sorted(store.keys()))
    show("contains xyz", "xyz" in store)
    show("contains nope", "nope" in store)
    try:
        store.add_data_to_store("xyz", xyz)
    except KeyError as e:
        show("add twice", type(e).__name__)
    try:
        store["bad/key"] = DiskBackedNDArray(xyz)
    except ValueError as e:
        show("bad key", type(e).__name__)
    try:
        store["raw"] = xyz
    except TypeError as e:
        show("raw array", type(e).__name__)
    show("xyz asarray", np.asarray(store["xyz"]))
    show("xyz slice", store["xyz"][:2, 1])
    show("xyz ufunc", np.sqrt(store["xyz"])[:1])
    show("xyz sum", float(np.asarray(store["xyz"]).sum()))
    show("xyz data", store["xyz"].data[5])
    store.offload(["intensity"])
    show("intensity offloaded", store["intensity"].offloaded)
    store["intensity"].load()
    show("intensity loaded", store["intensity"].offloaded)
    show("intensity", np.asarray(store["intensity"])[-3:])
    store.offload(pickle_container=True)
    show("store after offload", sorted((k, v is None) for k, v in store.items()))
    show("xyz reloaded", np.asarray(store["xyz"])[:2])
    show("grid", np.asarray(store["grid"]))
    show("get missing", store.get("missing", "default"))
    show("files", sorted(p.name for p in cache.iterdir() if p.suffix in (".npy", ".json")))
elif phase == "read":  # every entry, as this implementation reads it
    for k in sorted(store.keys()):
        show(k, np.asarray(store[k]))
else:  # reopen: another process reads (and extends) what the first wrote
    show("len", len(store))
    show("keys", sorted(store.keys()))
    show("xyz", np.asarray(store["xyz"])[:2])
    show("labels", np.asarray(store["labels"])[:10])
    show("intensity", np.asarray(store["intensity"])[-3:])
    show("grid", np.asarray(store["grid"]))
    show("flags", (store["xyz"].cache_enabled, store["xyz"].automatic_offloading))
    store.add_data_to_store("extra", np.full((4, 2), 2.5))
    store.offload(pickle_container=True)
    del store["labels"]
    show("after del", sorted(store.keys()))
    show("extra", np.asarray(store["extra"]))
    store.purge("intensity")
    show("after purge", sorted(store.keys()))
    show("files", sorted(p.name for p in cache.iterdir() if p.suffix in (".npy", ".json")))