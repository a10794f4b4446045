"""Benchmarks of the Python package, printed as ratios measured in one run.

    .venv/bin/python py/benches/bench_store.py [--dir DIR] [--mib 512] [--no-gsegutils]

1. writing: ``store[k] = a`` for every array, then ``store.flush()``, against
   ``np.save`` + ``os.fsync`` + ``os.replace`` of each array (the durable way
   to write one ``.npy`` with numpy);
2. reading: ``store[k]`` (a read-only array over the mapped file) against
   ``np.load(path, mmap_mode="r")``, on the same files; opening alone, and
   opening plus a sum of the data;
3. GSEGUtils 0.6.0's ``DiskBackedStore`` on the same workload
   (``add_data_to_store`` + ``offload(pickle_container=True)``; ``store[k]``
   of the reopened store, then ``.data``), when installed;
4. peak RSS of a spill run: 3x the memory budget written through a
   ``Store`` and read back, in a child process (its ``VmHWM``; the same
   run alone: ``/usr/bin/time -v .venv/bin/python py/benches/bench_store.py
   --spill-child DIR --mib 256``).

Absolute times on a shared machine mean little; the ratios compare the two
sides on the same data in the same run.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ndoffload import Store

N = 16


def durable_np_save(path: Path, a: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, a, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def best(f, repeat=3):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def drop_dir(d: Path) -> None:
    shutil.rmtree(d, ignore_errors=True)


def bench(base: Path, mib: int, with_gseg: bool) -> None:
    per = mib * (1 << 20) // N
    arrays = [np.full(per // 8, float(i)).reshape(-1, 4) for i in range(N)]
    total = sum(a.nbytes for a in arrays)
    print(f"workload: {N} float64 arrays of {per >> 20} MiB ({total >> 20} MiB)\n")

    # 1. Writing.
    def ours_write():
        d = base / "ours"
        drop_dir(d)
        with Store(d, memory_budget=None) as s:
            for i, a in enumerate(arrays):
                s[f"a{i}"] = a
            s.flush()

    def numpy_write():
        d = base / "np"
        drop_dir(d)
        d.mkdir(parents=True)
        for i, a in enumerate(arrays):
            durable_np_save(d / f"a{i}.npy", a)

    t_ours = best(ours_write)
    t_np = best(numpy_write)
    print("write (durable)                         seconds   MiB/s")
    print(f"  store[k] = a ... ; store.flush()       {t_ours:7.3f}  {total / t_ours / 2**20:7.0f}")
    print(f"  np.save + os.fsync + os.replace        {t_np:7.3f}  {total / t_np / 2**20:7.0f}")
    print(f"  ratio store / numpy                    {t_ours / t_np:7.2f}\n")

    # 2. Reading (the files written above; the store maps them).
    keys = [f"a{i}" for i in range(N)]
    reps = 50
    s = Store(base / "ours", memory_budget=None, read_only=True)
    for k in keys:  # first use: the entry's metadata is read once
        s[k]

    def ours_open():
        for _ in range(reps):
            for k in keys:
                s[k]

    def numpy_open():
        for _ in range(reps):
            for k in keys:
                np.load(base / "np" / f"{k}.npy", mmap_mode="r")

    def ours_sum():
        for k in keys:
            float(s[k].sum())

    def numpy_sum():
        for k in keys:
            float(np.load(base / "np" / f"{k}.npy", mmap_mode="r").sum())

    o1, n1 = best(ours_open), best(numpy_open)
    o2, n2 = best(ours_sum), best(numpy_sum)
    per_read = lambda t: t / (reps * N) * 1e6  # noqa: E731
    print("read                                    time")
    print(f"  store[k]                               {per_read(o1):7.1f} us per read")
    print(f"  np.load(mmap_mode='r')                 {per_read(n1):7.1f} us per read")
    print(f"  ratio store / numpy                    {o1 / n1:7.2f}")
    print(f"  store[k].sum(), all keys               {o2:7.3f} s")
    print(f"  np.load(mmap_mode='r').sum(), all keys {n2:7.3f} s")
    print(f"  ratio store / numpy                    {o2 / n2:7.2f}\n")
    s.close()

    # 3. GSEGUtils' store on the same workload.
    if with_gseg:
        try:
            from GSEGUtils.lazy_disk_cache import DiskBackedNDArray, DiskBackedStore, LazyDiskCacheConfig
        except ImportError:
            print("GSEGUtils not installed: skipped\n")
        else:

            def gseg_write():
                d = base / "gseg"
                drop_dir(d)
                g = DiskBackedStore(config=LazyDiskCacheConfig(cache_path=d, enable_caching=True), factory=DiskBackedNDArray)
                for i, a in enumerate(arrays):
                    g.add_data_to_store(f"a{i}", a)
                g.offload(pickle_container=True)

            def ours_write_gseg_api():
                from ndoffload.gsegutils import DiskBackedNDArray as N2, DiskBackedStore as S2, LazyDiskCacheConfig as C2

                d = base / "ours-g"
                drop_dir(d)
                g = S2(config=C2(cache_path=d, enable_caching=True), factory=N2)
                for i, a in enumerate(arrays):
                    g.add_data_to_store(f"a{i}", a)
                g.offload(pickle_container=True)
                g.close()

            tg = best(gseg_write)
            td = best(ours_write_gseg_api)
            gs = DiskBackedStore(config=LazyDiskCacheConfig(cache_path=base / "gseg", enable_caching=True), factory=DiskBackedNDArray)

            def gseg_read():
                for k in keys:
                    gs._store[k] = None  # as reopened: the entry is read from its pair
                    float(gs[k].data.sum())

            def ours_read():
                with Store(base / "ours", memory_budget=None, read_only=True) as r:
                    for k in keys:
                        float(r[k].sum())

            tgr, tor = best(gseg_read), best(ours_read)
            print("vs GSEGUtils 0.6.0 DiskBackedStore      seconds")
            print(f"  GSEGUtils add_data_to_store + offload(pickle_container=True)  {tg:7.3f}")
            print(f"  ndoffload.gsegutils, the same code                            {td:7.3f}")
            print(f"  ndoffload.Store: store[k] = a + flush (above)                 {t_ours:7.3f}")
            print(f"  ratio ndoffload.gsegutils / GSEGUtils                         {td / tg:7.2f}")
            print(f"  ratio Store / GSEGUtils                                       {t_ours / tg:7.2f}")
            print(f"  GSEGUtils store[k].data.sum(), all keys (from the pairs)      {tgr:7.3f}")
            print(f"  Store store[k].sum(), all keys (mapped, new handle)           {tor:7.3f}")
            print(f"  ratio Store / GSEGUtils                                       {tor / tgr:7.2f}\n")

    # 4. Peak RSS of a spill run, 3x the budget, in a child process.
    budget = max(mib // 2, 64)
    r = subprocess.run(
        [sys.executable, __file__, "--spill-child", str(base / "spill"), "--mib", str(budget)],
        capture_output=True,
        text=True,
        check=True,
    )
    # The child's own high-water mark (a parent's RUSAGE_CHILDREN would
    # count the parent's memory at fork time).
    peak = int(r.stdout.split("VmHWM=")[1].split()[0]) / 1024
    print(f"spill run: {3 * budget} MiB through a {budget} MiB budget, written then read back")
    print(r.stdout.split("VmHWM=")[0].rstrip())
    print(f"  peak RSS of the child (VmHWM)          {peak:7.0f} MiB ({peak / budget:.2f}x the budget)")


def spill_child(d: str, budget_mib: int) -> None:
    """Writes 3x the budget through a Store (16 MiB arrays made one at a
    time), then reads every entry back and checks it."""
    chunk = 16 << 20
    n = 3 * budget_mib * (1 << 20) // chunk
    t = time.perf_counter()
    with Store(d, memory_budget=f"{budget_mib}MiB") as s:
        for i in range(n):
            s[f"c{i}"] = np.full(chunk // 8, float(i))
        for i in range(n):
            a = s[f"c{i}"]
            assert a[0] == i and a[-1] == i
            del a
        st = s.stats()
    print(f"  {n} entries, {st['evictions']} evictions, {time.perf_counter() - t:.2f} s")
    with open("/proc/self/status") as f:
        hwm = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    print(f"VmHWM={hwm} kB")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dir")
    p.add_argument("--mib", type=int, default=512)
    p.add_argument("--no-gsegutils", action="store_true")
    p.add_argument("--spill-child")
    a = p.parse_args()
    if a.spill_child:
        spill_child(a.spill_child, a.mib)
        return
    base = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="ndoffload-bench-"))
    try:
        bench(base, a.mib, not a.no_gsegutils)
    finally:
        if not a.dir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
