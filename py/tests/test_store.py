"""The Python package's Store: round trips, zero-copy reads, pins, errors,
the GIL, threads, processes, the object-storage tier."""

import json
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import ndoffload
from ndoffload import CorruptError, ReadOnlyError, Store

DTYPES = [np.dtype(d) for d in ndoffload.SUPPORTED_DTYPES]


def sample(dtype, shape, seed=0):
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    if dtype.kind == "b":
        a = rng.integers(0, 2, n).astype(bool)
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        a = rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True)
    elif dtype.kind == "f":
        a = rng.standard_normal(n).astype(dtype)
    else:
        a = (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(dtype)
    return a.reshape(shape)


def layouts(dtype):
    base = sample(dtype, (6, 5))
    yield "c", base
    yield "fortran", np.asfortranarray(base)
    yield "strided", base[::2, ::-1]
    yield "0d", sample(dtype, ())
    yield "empty", sample(dtype, (0, 3))
    yield "3d", sample(dtype, (2, 3, 4), seed=1)
    if dtype.itemsize > 1:
        yield "big-endian", base.astype(dtype.newbyteorder(">"))


def mapped_regions(path):
    """(start, end) of this process's maps of `path`."""
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and parts[5] == str(path):
                a, b = parts[0].split("-")
                out.append((int(a, 16), int(b, 16)))
    return out


def address(a):
    return a.__array_interface__["data"][0]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_every_dtype_and_layout_round_trips(tmp_path, dtype):
    with Store(tmp_path / "s") as s:
        cases = dict(layouts(dtype))
        for name, a in cases.items():
            s[name] = a
        # From RAM.
        for name, a in cases.items():
            b = s[name]
            assert b.shape == a.shape and b.dtype == a.dtype.newbyteorder("=")
            np.testing.assert_array_equal(b, a)
            assert not b.flags.writeable
        assert s["fortran"].flags.f_contiguous
        del b  # no array of the store held: every entry can be offloaded
        s.flush()
        assert s.offload() == []
    # From the files, in a new process's view (a new handle), mapped.
    with Store(tmp_path / "s", read_only=True) as s:
        for name, a in dict(layouts(dtype)).items():
            b = s[name]
            np.testing.assert_array_equal(b, a)
            assert b.dtype.isnative
        assert s["fortran"].flags.f_contiguous
        # numpy reads every file as it is.
        for name, a in dict(layouts(dtype)).items():
            np.testing.assert_array_equal(np.load(tmp_path / "s" / f"{name}.npy"), a)


def test_a_read_is_the_mapped_file_without_a_copy(tmp_path):
    a = np.arange(1 << 20, dtype=np.float64).reshape(1024, 1024)
    with Store(tmp_path, memory_budget="64MiB") as s:
        s.insert("big", a, durable=True)
        s.offload("big")
        b = s["big"]
        regions = mapped_regions(tmp_path / "big.npy")
        assert regions, "the .npy is not mapped"
        p = address(b)
        assert any(lo <= p and p + a.nbytes <= hi for lo, hi in regions)
        assert s.info("big")["state"] == "mapped"
        # A second read is the same memory: no copy.
        assert address(s["big"]) == p
        assert isinstance(b.base, ndoffload._ndoffload.Pin)
        with pytest.raises(ValueError):
            b[0, 0] = 1.0
        with pytest.raises(ValueError):
            b.flags.writeable = True
        np.testing.assert_array_equal(b, a)
    # A big-endian file numpy wrote is read as a copy in host order.
    np.save(tmp_path / "be.npy", a[:3].astype(">f8"))
    (tmp_path / "be.meta.json").write_text(
        json.dumps({"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray", "shape": [3, 1024], "dtype": ">f8"})
    )
    with Store(tmp_path, read_only=True) as s:
        be = s["be"]
        assert be.dtype == np.dtype("<f8") and be.flags.writeable  # a copy
        np.testing.assert_array_equal(be, a[:3])


def test_in_ram_reads_share_memory(tmp_path):
    with Store(tmp_path) as s:
        s["a"] = np.ones(1000)
        x, y = s["a"], s["a"]
        assert address(x) == address(y)
        assert s.info("a")["state"] == "in_memory"


def test_a_value_held_survives_replace_removal_eviction_and_close(tmp_path):
    s = Store(tmp_path, memory_budget="1MiB")
    first = np.arange(100_000, dtype=np.int64)  # 800 KB
    s["k"] = first
    s.flush()
    s.offload("k")
    held = s["k"]  # mapped
    ram = s["k"]
    s["k"] = np.zeros(10)  # replaced
    for i in range(20):  # ~16 MB through a 1 MiB budget
        s[f"filler{i}"] = np.full(100_000, i, dtype=np.int64)
    assert s.stats()["evictions"] > 0
    np.testing.assert_array_equal(held, first)
    del s["k"]
    np.testing.assert_array_equal(held, first)
    s["k2"] = np.arange(50_000.0)
    in_ram = s["k2"]  # held in RAM: the budget cannot evict it
    for i in range(20, 30):
        s[f"filler{i}"] = np.full(100_000, i, dtype=np.int64)
    assert s.info("k2")["state"] == "in_memory"
    np.testing.assert_array_equal(in_ram, np.arange(50_000.0))
    assert s.offload(["k2"]) == ["k2"]  # held: written, not freed
    s.close()
    np.testing.assert_array_equal(held, first)
    np.testing.assert_array_equal(ram, first)
    np.testing.assert_array_equal(in_ram, np.arange(50_000.0))
    del held, ram, in_ram
    with Store(tmp_path, read_only=True) as r:
        assert "k" not in r
        np.testing.assert_array_equal(r["k2"], np.arange(50_000.0))
        np.testing.assert_array_equal(r["filler3"], np.full(100_000, 3))


def test_mapping_protocol_attrs_info_stats(tmp_path):
    with Store(tmp_path, memory_budget=1 << 20, disk_budget="1GB") as s:
        assert len(s) == 0 and list(s) == [] and "a" not in s
        s.insert("a", np.arange(3), attrs={"crs": "EPSG:2056", "origin": [1.5, 2]})
        s.insert("b", np.arange(4.0), durable=True)
        s.insert("c", np.arange(5), recomputable=True)
        assert sorted(s) == ["a", "b", "c"] and sorted(s.keys()) == ["a", "b", "c"] and len(s) == 3
        assert "a" in s and 3 not in s and "x/y" not in s
        assert s.attrs("a") == {"crs": "EPSG:2056", "origin": [1.5, 2]}
        s.set_attrs("a", {"crs": "EPSG:4326"})
        assert s.attrs("a") == {"crs": "EPSG:4326"}
        assert s.attrs("b") == {}
        info = s.info("c")
        assert info["recomputable"] and info["dtype"] == "<i8" and info["shape"] == (5,) and info["nbytes"] == 40
        assert s.get("missing") is None and s.get("missing", 7) == 7
        st = s.stats()
        assert st["budget"] == 1 << 20 and st["disk_budget"] == 10**9
        assert s.prefetch(["b"]) >= 0
        s.flush()
        meta = json.loads((tmp_path / "a.meta.json").read_text())
        assert meta["ndoffload_attrs"] == {"crs": "EPSG:4326"}
        assert s.pop("c").tolist() == [0, 1, 2, 3, 4] and "c" not in s
    assert s.closed
    with pytest.raises(ndoffload.ClosedError):
        s["a"]
    s.close()  # again: nothing


def test_get_or_compute_in_threads_computes_once(tmp_path):
    calls = []

    def make():
        calls.append(1)
        time.sleep(0.2)
        return np.arange(10, dtype=np.uint16)

    with Store(tmp_path) as s:
        out = []
        ts = [threading.Thread(target=lambda: out.append(s.get_or_compute("k", make))) for _ in range(6)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert len(calls) == 1 and len(out) == 6
        for o in out:
            np.testing.assert_array_equal(o, np.arange(10))
        assert s.info("k")["recomputable"]

        class Boom(Exception):
            pass

        def fail():
            raise Boom("no")

        with pytest.raises(Boom):
            s.get_or_compute("bad", fail)
        assert "bad" not in s
        with pytest.raises(TypeError):
            s.get_or_compute("bad", lambda: np.array(["x"]))
        assert "bad" not in s


def compute_in_child(path, counter, barrier):
    s = Store(path)
    barrier.wait()

    def make():
        with open(counter, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)
        return np.full((100, 3), 42.0)

    a = s.get_or_compute("shared", make)
    ok = a.shape == (100, 3) and bool((a == 42.0).all())
    s.close()
    return ok


def test_get_or_compute_from_four_processes_computes_once(tmp_path):
    counter = tmp_path / "computed"
    ctx = mp.get_context("spawn")
    with ctx.Manager() as m:
        barrier = m.Barrier(4)
        with ctx.Pool(4) as pool:
            results = pool.starmap(compute_in_child, [(str(tmp_path / "s"), str(counter), barrier)] * 4)
    assert results == [True] * 4
    assert len(counter.read_text().splitlines()) == 1


def test_python_reader_while_rust_writer_replaces(tmp_path, writer_exe):
    d = tmp_path / "s"
    with Store(d) as s:  # the keys exist before the reader starts
        for k in range(4):
            s.insert(f"k{k}", np.full(1000, -1.0), durable=True)
    writer = subprocess.Popen([str(writer_exe), str(d), "3", "4"], stdout=subprocess.PIPE, text=True)
    reads = torn = failed = 0
    r = Store(d, read_only=True)
    t_end = time.time() + 2.5
    while time.time() < t_end or reads < 200:
        r.refresh()
        for k in range(4):
            try:
                a = r[f"k{k}"]
            except Exception:  # noqa: BLE001
                failed += 1
                continue
            v = a[0]
            if v >= 0 and (len(a) != 1000 + (int(v) % 13) * 100 or not (a == v).all()):
                torn += 1
            reads += 1
        if time.time() > t_end + 10:
            break
    out, _ = writer.communicate(timeout=60)
    r.close()
    assert writer.returncode == 0
    replaced = int(out.strip())
    assert replaced > 10, replaced
    assert (torn, failed) == (0, 0), (reads, torn, failed)
    assert reads >= 200


BAD_KEYS = ["", ".", "..", "a/b", "a\\b", "c:x", "/abs", "CON", "nul.txt", "x\x00y", "tail.", "tail ", "k" * 300]


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
def test_bad_keys_are_value_errors(tmp_path, key):
    with Store(tmp_path) as s:
        with pytest.raises(ValueError, match="invalid name"):
            s[key] = np.zeros(2)
        with pytest.raises(ValueError):
            s[key]
        assert key not in s


def test_bad_input_raises_python_exceptions(tmp_path):
    with Store(tmp_path) as s:
        for bad in [np.array([1, None]), np.array(["a", "b"]), np.zeros(3, np.float16), np.zeros(2, dtype="i4,f8"), np.array([b"x"]), np.zeros(2, dtype="M8[s]"), object()]:
            with pytest.raises(TypeError):
                s["k"] = bad
        for key in [1, None, b"k", ("t",)]:
            with pytest.raises(TypeError):
                s[key] = np.zeros(1)
            with pytest.raises(TypeError):
                s[key]
        # 4 EiB of logical elements over one byte: refused, never an abort.
        huge = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), shape=(1 << 31, 1 << 31), strides=(0, 0))
        with pytest.raises(MemoryError):
            s["huge"] = huge
        big = np.lib.stride_tricks.as_strided(np.zeros(1), shape=(1 << 36,), strides=(0,))
        with pytest.raises(MemoryError):
            s["big"] = big
        # Non-contiguous (and negative strides) is fine: stored in C order.
        nc = np.arange(100.0).reshape(10, 10)[::3, ::-2]
        s["nc"] = nc
        np.testing.assert_array_equal(s["nc"], nc)
        assert s["nc"].flags.c_contiguous
        with pytest.raises(KeyError):
            s["missing"]
        with pytest.raises(KeyError):
            del s["missing"]
        with pytest.raises(TypeError):
            s.insert("k", np.zeros(1), attrs=["not", "a", "dict"])
        with pytest.raises(TypeError):
            s.insert("k", np.zeros(1), attrs={"x": object()})
        with pytest.raises(TypeError):
            s.get_or_compute("k", "not callable")
        assert "k" not in s and "huge" not in s and "big" not in s
    with pytest.raises(ValueError, match='invalid size "lots" for memory_budget'):
        Store(tmp_path, memory_budget="lots")
    with pytest.raises(TypeError):
        Store(tmp_path, memory_budget=1.5)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(NotADirectoryError) as e:
        Store(f)
    assert e.value.filename == str(f) and "is a file, not a store directory" in str(e.value)
    with pytest.raises(FileNotFoundError) as e:
        Store(tmp_path / "missing", read_only=True)
    assert e.value.filename == str(tmp_path / "missing")
    with Store(tmp_path, read_only=True) as r:
        with pytest.raises(ReadOnlyError, match="is open read-only"):
            r["x"] = np.zeros(1)


def test_corrupt_files_raise_store_errors_with_the_crates_message(tmp_path):
    with Store(tmp_path) as s:
        s.insert("a", np.arange(10.0), durable=True)
    (tmp_path / "a.meta.json").write_text('{"schema_version": 2, "lazy_disk_cache_class": "DiskBackedNDArray"}')
    with Store(tmp_path, read_only=True) as r:
        with pytest.raises(CorruptError) as e:
            r["a"]
        assert isinstance(e.value, ndoffload.StoreError)
        assert str(e.value) == f"{tmp_path / 'a.meta.json'}: unsupported schema_version 2 (this crate reads version 1)"
    with open(tmp_path / "a.npy", "r+b") as f:  # truncated data
        f.truncate(100)
    (tmp_path / "a.meta.json").write_text('{"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray"}')
    with Store(tmp_path, read_only=True) as r:
        with pytest.raises(CorruptError):
            r["a"]


def test_exclusive_open_is_a_locked_error(tmp_path):
    with Store(tmp_path, exclusive=True):
        with pytest.raises(ndoffload.LockedError, match="is locked by"):
            Store(tmp_path)


def test_gil_is_released_during_a_1gib_flush(tmp_path):
    a = np.ones(1 << 27)  # 1 GiB
    s = Store(tmp_path, memory_budget=None)
    s["big"] = a
    del a
    ticks = []
    done = threading.Event()

    def tick():
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    t = threading.Thread(target=tick)
    t.start()
    time.sleep(0.05)
    start = time.perf_counter()
    s.flush()
    end = time.perf_counter()
    done.set()
    t.join()
    during = [x for x in ticks if start < x < end]
    took = end - start
    # The ticking thread ran all along: at least one tick per 20 ms.
    assert len(during) >= max(3, took / 0.02), (len(during), took)
    assert os.path.getsize(tmp_path / "big.npy") == (1 << 30) + 128
    s.close()


def test_threads_share_one_handle(tmp_path):
    errors = []
    with Store(tmp_path, memory_budget="2MiB") as s:

        def work(t):
            try:
                for i in range(50):
                    k = f"t{t}_{i % 5}"
                    s[k] = np.full(10_000, t * 1000 + i)
                    v = s[k]
                    assert v.shape == (10_000,)
                    if i % 10 == 0:
                        s.flush()
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        ts = [threading.Thread(target=work, args=(t,)) for t in range(6)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert errors == []
        assert len(s) == 30
        for t in range(6):
            for j in range(5):
                last = max(i for i in range(50) if i % 5 == j)
                assert s[f"t{t}_{j}"][0] == t * 1000 + last


def forked_child(s, path, q):
    try:
        # The inherited handle is the parent's: the child opens the store again.
        q.put(("read", int(s["parent"][0])))
        s["child"] = np.full(3, 7.0)
        s.flush()
        s.close()
        q.put(("ok", None))
    except Exception as e:  # noqa: BLE001
        q.put(("error", repr(e)))


def spawned_child(s, q):
    try:
        q.put(("read", int(s["parent"][0])))
        s["spawned"] = np.full(3, 8.0)
        s.close()
        q.put(("ok", None))
    except Exception as e:  # noqa: BLE001
        q.put(("error", repr(e)))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_fork_and_spawn(tmp_path, method):
    ctx = mp.get_context(method)
    s = Store(tmp_path)
    s["parent"] = np.full(5, 3)
    held = s["parent"]
    s.flush()
    busy = threading.Event()

    def hammer():  # another thread inside the store while forking
        while not busy.is_set():
            s["noise"] = np.zeros(1000)
            s.flush()

    t = threading.Thread(target=hammer)
    t.start()
    try:
        q = ctx.Queue()
        target, args = (forked_child, (s, str(tmp_path), q)) if method == "fork" else (spawned_child, (s, q))
        p = ctx.Process(target=target, args=args)
        p.start()
        got = [q.get(timeout=60), q.get(timeout=60)]
        p.join(timeout=60)
    finally:
        busy.set()
        t.join()
    assert got == [("read", 3), ("ok", None)], got
    assert p.exitcode == 0
    # The parent's handle is intact: its lock and registration are its own.
    s.refresh()
    name = "child" if method == "fork" else "spawned"
    assert name in s
    s["after"] = np.ones(2)
    s.flush()
    np.testing.assert_array_equal(held, np.full(5, 3))
    writers = list((tmp_path / ".ndoffload" / "writers").iterdir())
    assert len(writers) == 1 and str(os.getpid()) in writers[0].read_text()
    s.close()
    assert not list((tmp_path / ".ndoffload" / "writers").iterdir())


def test_remote_tier_on_moto(tmp_path, moto_endpoint):
    url = "s3://ndo-py-test/pytest"
    a = np.arange(3_000_000, dtype=np.float32).reshape(-1, 3)  # 36 MB: multipart
    with Store(tmp_path / "cache1", remote=url) as s:
        s.insert("points", a, durable=True, attrs={"crs": "EPSG:2056"})
        s["small"] = np.arange(4)
        s.flush()
        np.testing.assert_array_equal(s["points"], a)
    # Another node: an empty cache.
    with Store(tmp_path / "cache2", remote=url) as s:
        assert sorted(s) == ["points", "small"]
        np.testing.assert_array_equal(s["points"], a)
        assert s.attrs("points") == {"crs": "EPSG:2056"}
        s["small"] = np.arange(5)
        s.flush()
        del s["points"]
    with Store(tmp_path / "cache3", remote=url) as s:
        assert sorted(s) == ["small"]
        np.testing.assert_array_equal(s["small"], np.arange(5))
    # A disk budget drops clean cached copies, never entries of the bucket.
    with Store(tmp_path / "c4", remote=url, disk_budget=1) as s:
        np.testing.assert_array_equal(s["small"], np.arange(5))
        assert sorted(s) == ["small"]


def test_pickled_store_reopens(tmp_path):
    import pickle

    s = Store(tmp_path, memory_budget="8MiB")
    s["a"] = np.arange(3)
    t = pickle.loads(pickle.dumps(s))  # flushed, then opened again
    np.testing.assert_array_equal(t["a"], np.arange(3))
    assert t.stats()["budget"] == 8 << 20
    t.close()
    s.close()


def test_type_stubs_name_every_public_method():
    stub = Path(ndoffload.__file__).with_name("__init__.pyi")
    text = stub.read_text()
    for name in ["insert", "attrs", "set_attrs", "info", "get_or_compute", "flush", "close", "stats", "prefetch", "offload", "refresh"]:
        assert f"def {name}(" in text, name
    assert (Path(ndoffload.__file__).parent / "py.typed").exists()
