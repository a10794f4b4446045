"""Tests of ndoffload_store.py's rules on hand-made stores (numpy + stdlib).

    python python/test_ndoffload_store.py

The Rust integration test ``python_reader`` runs this file, and reads a store
with ``ndoffload_store.load`` while a Rust writer replaces its entry.
"""

import json
import os
import socket
import stat
import sys
import tempfile
import time
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ndoffload_store as S  # noqa: E402


def meta_of(a, attrs=None, token=None, dtype=None, shape=None):
    m = {
        "schema_version": 1,
        "lazy_disk_cache_class": "DiskBackedNDArray",
        "shape": list(a.shape) if shape is None else shape,
        "dtype": a.dtype.str if dtype is None else dtype,
        "purge_disk_on_gc": False,
        "automatic_offloading": False,
        "enable_caching": True,
    }
    if attrs is not None:
        m["ndoffload_attrs"] = attrs
    if token is not None:
        m["ndoffload_version"] = token
    return m


#: A writer process emulating the crate's publish with version links (argv:
#: store directory, stop file): stage K.npy, link it as
#: .ndoffload/versions/K.<token>, stage K.meta.json naming the token, rename
#: the .npy and then the metadata into place, then remove the previous
#: version's link.
VERSIONED_WRITER = r"""
import json, os, sys
import numpy as np
store, stop = sys.argv[1], sys.argv[2]
versions = os.path.join(store, ".ndoffload", "versions")
os.makedirs(versions, exist_ok=True)
gen, prev = 0, None
while not os.path.exists(stop):
    token = "%d-%x" % (os.getpid(), gen)
    tmp_npy = os.path.join(store, ".ndo.%s.e.npy.tmp" % token)
    tmp_meta = os.path.join(store, ".ndo.%s.e.meta.json.tmp" % token)
    with open(tmp_npy, "wb") as f:
        np.save(f, np.full((64, 8), gen, dtype=np.int64))
    os.link(tmp_npy, os.path.join(versions, "e." + token))
    with open(tmp_meta, "w") as f:
        json.dump({"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray",
                   "shape": [64, 8], "dtype": "<i8", "ndoffload_attrs": {"gen": gen},
                   "ndoffload_version": token}, f)
    os.rename(tmp_npy, os.path.join(store, "e.npy"))
    os.rename(tmp_meta, os.path.join(store, "e.meta.json"))
    if prev is not None:
        os.remove(os.path.join(versions, "e." + prev))
    gen, prev = gen + 1, token
"""


class StoreTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name
        self.versions = os.path.join(self.dir, ".ndoffload", "versions")
        self.attempts = S.ATTEMPTS

    def tearDown(self):
        S.ATTEMPTS = self.attempts
        self.tmp.cleanup()

    def path(self, name):
        return os.path.join(self.dir, name)

    def put(self, key, a, **meta):
        """A pair as numpy and a hand-written metadata file make it."""
        np.save(self.path(key + ".npy"), a)
        with open(self.path(key + ".meta.json"), "w") as f:
            json.dump(meta_of(a, **meta), f)

    def link_version(self, key, token, target=None):
        os.makedirs(self.versions, exist_ok=True)
        os.link(target or self.path(key + ".npy"), os.path.join(self.versions, f"{key}.{token}"))

    # -- the legacy rule: no token, or a file with one link ------------------

    def test_numpy_store_without_token(self):
        a = np.arange(12, dtype=np.float32).reshape(3, 4)
        self.put("a", a, attrs={"crs": "EPSG:2056"})
        for mm in (True, False):
            b, attrs = S.load(self.dir, "a", mmap=mm)
            np.testing.assert_array_equal(a, b)
            self.assertEqual(attrs, {"crs": "EPSG:2056"})
            self.assertEqual(b.flags.writeable, not mm)
        self.assertIsInstance(S.load(self.dir, "a")[0], np.memmap)
        self.assertEqual(S.load_meta(self.dir, "a")["ndoffload_attrs"], {"crs": "EPSG:2056"})
        self.assertEqual(S.keys(self.dir), ["a"])

    def test_meta_without_shape_or_dtype_takes_the_header(self):
        a = np.arange(6, dtype=np.int16)
        np.save(self.path("a.npy"), a)
        with open(self.path("a.meta.json"), "w") as f:
            json.dump({"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray"}, f)
        b, attrs = S.load(self.dir, "a")
        np.testing.assert_array_equal(a, b)
        self.assertEqual(attrs, {})

    def test_disagreement_without_token_raises_after_retrying(self):
        S.ATTEMPTS = 5
        a = np.zeros((4, 3), np.float64)
        self.put("a", a, shape=[3, 4])
        with self.assertRaisesRegex(S.EntryError, "disagrees"):
            S.load(self.dir, "a")
        self.put("b", a, dtype="<f4")
        with self.assertRaisesRegex(S.EntryError, "disagrees"):
            S.load(self.dir, "b")

    def test_token_with_a_single_link_uses_the_legacy_rule(self):
        # A store copied with `cp -r`: the metadata names a version, but the
        # .npy has one link and the version link (if copied) is another file.
        a = np.arange(5, dtype=np.uint8)
        self.put("a", a, token="abc-1")
        os.makedirs(self.versions)
        with open(self.path("a.npy"), "rb") as src:
            data = src.read()
        with open(os.path.join(self.versions, "a.abc-1"), "wb") as f:
            f.write(data)
        self.assertEqual(os.stat(self.path("a.npy")).st_nlink, 1)
        start = time.monotonic()
        b, _ = S.load(self.dir, "a")
        self.assertLess(time.monotonic() - start, 0.5, "no retries")
        np.testing.assert_array_equal(a, b)
        S.ATTEMPTS = 5
        self.put("c", a, token="abc-2", shape=[6])
        with self.assertRaisesRegex(S.EntryError, "disagrees"):
            S.load(self.dir, "c")

    # -- the version link ----------------------------------------------------

    def test_matching_version_link(self):
        a = np.asfortranarray(np.arange(24, dtype=">f8").reshape(2, 3, 4))
        self.put("a", a, token="0-1a-zz", attrs={"gen": 3})
        self.link_version("a", "0-1a-zz")
        start = time.monotonic()
        b, attrs = S.load(self.dir, "a")
        self.assertLess(time.monotonic() - start, 0.5, "no retries")
        np.testing.assert_array_equal(a, b)
        self.assertTrue(b.flags.f_contiguous and not b.flags.c_contiguous)
        self.assertEqual(b.dtype.str, ">f8")
        self.assertEqual(attrs, {"gen": 3})

    def test_matching_link_but_header_disagrees_is_an_error(self):
        a = np.zeros(3, np.int16)
        self.put("a", a, token="t1", shape=[4])
        self.link_version("a", "t1")
        with self.assertRaisesRegex(S.EntryError, "same version t1"):
            S.load(self.dir, "a")

    def test_missing_or_other_link_retries_then_falls_back(self):
        S.ATTEMPTS = 20
        a = np.arange(4, dtype=np.float32)
        self.put("a", a, token="t2")
        # Two links, none of them the version link: a publish in flight.
        os.link(self.path("a.npy"), self.path("elsewhere"))
        b, _ = S.load(self.dir, "a")  # falls back: the header agrees
        np.testing.assert_array_equal(a, b)
        # The version link names another file.
        np.save(self.path("other.npy"), a + 1)
        self.link_version("a", "t2", target=self.path("other.npy"))
        b, _ = S.load(self.dir, "a")
        np.testing.assert_array_equal(a, b)
        # ... and a header that disagrees too is an error.
        self.put("c", a, token="t3", shape=[5])
        os.link(self.path("c.npy"), self.path("c-elsewhere"))
        with self.assertRaisesRegex(S.EntryError, "disagrees"):
            S.load(self.dir, "c")

    def test_link_appearing_during_the_retries(self):
        # The writer's rename of the metadata is about to happen: the reader
        # sees the new token first, the link a little later.
        a = np.arange(3, dtype=np.uint8)
        self.put("a", a, token="late")
        os.link(self.path("a.npy"), self.path("staged"))
        import threading

        t = threading.Timer(0.05, self.link_version, args=("a", "late"))
        t.start()
        try:
            b, _ = S.load(self.dir, "a")
        finally:
            t.join()
        np.testing.assert_array_equal(a, b)

    def test_invalid_token_is_an_error(self):
        a = np.arange(3, dtype=np.uint8)
        for token in ["../x", "A", "", 7]:
            self.put("a", a, token=token)
            with self.assertRaisesRegex(S.EntryError, "invalid ndoffload_version"):
                S.load(self.dir, "a")

    def test_a_versioned_writer_process_running(self):
        # A writer process following the crate's protocol publishes versions
        # that all have the same header (so the header-agreement rule alone
        # could not tell them apart): every element and the attributes carry
        # the generation; only the version link keeps the pair consistent.
        import subprocess

        stop = self.path("stop")
        writer = subprocess.Popen([sys.executable, "-c", VERSIONED_WRITER, self.dir, stop])
        try:
            deadline = time.monotonic() + 30
            while not os.path.exists(self.path("e.meta.json")):
                self.assertIsNone(writer.poll(), "the writer exited")
                self.assertLess(time.monotonic(), deadline, "no first publish")
                time.sleep(0.001)
            reads, bad, gens = 0, [], set()
            end = time.monotonic() + 2
            while time.monotonic() < end:
                a, attrs = S.load(self.dir, "e", mmap=reads % 2 == 0)
                reads += 1
                gens.add(attrs["gen"])
                if not (a == attrs["gen"]).all():
                    bad.append((attrs["gen"], np.unique(a).tolist()))
        finally:
            open(stop, "w").close()
            writer.wait(30)
        self.assertEqual(writer.returncode, 0)
        self.assertEqual(bad[:5], [], f"{len(bad)} torn reads of {reads}")
        self.assertGreater(len(gens), 1, "the writer published while the reader read")

    # -- the file itself -----------------------------------------------------

    def test_truncated_or_longer_file_is_an_error(self):
        a = np.arange(1000, dtype=np.float64)
        self.put("a", a)
        size = os.path.getsize(self.path("a.npy"))
        os.truncate(self.path("a.npy"), size - 8)
        for mm in (True, False):
            with self.assertRaisesRegex(S.EntryError, "truncated"):
                S.load(self.dir, "a", mmap=mm)
        os.truncate(self.path("a.npy"), size + 1)
        with self.assertRaisesRegex(S.EntryError, "longer than its header says"):
            S.load(self.dir, "a")
        os.truncate(self.path("a.npy"), 20)  # inside the header
        with self.assertRaisesRegex(S.EntryError, "not a valid .npy file"):
            S.load(self.dir, "a")

    def test_empty_scalar_bool_and_complex_arrays(self):
        cases = {
            "empty": np.zeros((0, 3), np.uint16),
            "empty_f": np.asfortranarray(np.zeros((2, 0, 4), np.int64)),
            "scalar": np.array(2.5),
            "flags": np.array([True, False, True]),
            "z": np.array([1 + 2j, -3j], np.complex128),
        }
        for k, a in cases.items():
            self.put(k, a)
            for mm in (True, False):
                b, _ = S.load(self.dir, k, mmap=mm)
                self.assertEqual((b.dtype, b.shape), (a.dtype, a.shape), k)
                np.testing.assert_array_equal(a, b)
        self.assertFalse(S.load(self.dir, "empty")[0].flags.writeable)

    def test_format_2_header(self):
        a = np.arange(6, dtype=np.int32).reshape(2, 3)
        with open(self.path("a.npy"), "wb") as f:
            np.lib.format.write_array(f, a, version=(2, 0))
        with open(self.path("a.meta.json"), "w") as f:
            json.dump(meta_of(a), f)
        np.testing.assert_array_equal(S.load(self.dir, "a")[0], a)

    def test_pickles_are_refused(self):
        a = np.array([{"x": 1}], dtype=object)
        np.save(self.path("a.npy"), a, allow_pickle=True)
        with open(self.path("a.meta.json"), "w") as f:
            json.dump({"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray"}, f)
        with self.assertRaisesRegex(S.EntryError, "Python objects"):
            S.load(self.dir, "a")

    def test_special_files_are_refused_without_hanging(self):
        a = np.arange(3, dtype=np.uint8)
        self.put("a", a)
        np.save(self.path("real.npy"), a)
        os.remove(self.path("a.npy"))
        os.symlink(self.path("real.npy"), self.path("a.npy"))
        with self.assertRaisesRegex(S.EntryError, "not a regular file"):
            S.load(self.dir, "a")
        os.remove(self.path("a.npy"))
        os.mkfifo(self.path("a.npy"))
        with self.assertRaisesRegex(S.EntryError, "not a regular file"):
            S.load(self.dir, "a")
        os.remove(self.path("a.npy"))
        np.save(self.path("a.npy"), a)
        os.remove(self.path("a.meta.json"))
        os.mkfifo(self.path("a.meta.json"))
        with self.assertRaisesRegex(S.EntryError, "not a regular file"):
            S.load(self.dir, "a")
        os.remove(self.path("a.meta.json"))
        s = socket.socket(socket.AF_UNIX)
        try:
            s.bind(self.path("a.meta.json"))
            with self.assertRaisesRegex(S.EntryError, "not a regular file"):
                S.load(self.dir, "a")
        finally:
            s.close()
        self.assertTrue(stat.S_ISSOCK(os.lstat(self.path("a.meta.json")).st_mode))

    def test_missing_and_invalid_names(self):
        with self.assertRaises(FileNotFoundError):
            S.load(self.dir, "nothing")
        for key in ["", ".", "..", "a/b", "../a"]:
            with self.assertRaises(S.EntryError):
                S.load(self.dir, key)

    def test_a_map_outlives_a_replace(self):
        a = np.arange(100, dtype=np.int64)
        self.put("a", a)
        b, _ = S.load(self.dir, "a")
        # A publish renames a new file over the name (never writes in place):
        # the map keeps the file it was made from.
        tmp = self.path("new.npy")
        np.save(tmp, a * 3)
        os.rename(tmp, self.path("a.npy"))
        np.testing.assert_array_equal(b, a)
        np.testing.assert_array_equal(S.load(self.dir, "a", mmap=False)[0], a * 3)

if __name__ == "__main__":
    unittest.main()
