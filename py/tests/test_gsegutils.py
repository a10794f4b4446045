"""ndoffload.gsegutils against GSEGUtils 0.6.0 itself: code written for
GSEGUtils (tests/gseg_usage.py, which follows its documentation) runs
unchanged but for the import and prints the same, and stores each writes
are read and extended by the other."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ndoffload import gsegutils as ours

USAGE = Path(__file__).with_name("gseg_usage.py")


def run(impl, cache, phase):
    r = subprocess.run([sys.executable, str(USAGE), impl, str(cache), phase], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_documented_usage_runs_unchanged_but_the_import(tmp_path, gsegutils):
    theirs = run("gsegutils", tmp_path / "g", "write") + run("gsegutils", tmp_path / "g", "reopen")
    mine = run("ndoffload", tmp_path / "n", "write") + run("ndoffload", tmp_path / "n", "reopen")
    assert mine == theirs
    assert "xyz asarray" in mine and "after purge" in mine


def test_a_store_gsegutils_wrote_is_read_and_extended(tmp_path, gsegutils):
    # GSEGUtils writes; the drop-in reopens and extends it; GSEGUtils reads
    # the result as it reads a store it extended itself.
    run("gsegutils", tmp_path / "a", "write")
    run("gsegutils", tmp_path / "b", "write")
    assert run("ndoffload", tmp_path / "a", "reopen") == run("gsegutils", tmp_path / "b", "reopen")
    assert run("gsegutils", tmp_path / "a", "read") == run("gsegutils", tmp_path / "b", "read")
    # And the plain Store reads every pair GSEGUtils wrote.
    from ndoffload import Store

    with Store(tmp_path / "b", read_only=True) as s:
        assert sorted(s) == ["extra", "grid", "labels", "xyz"]
        assert s["grid"].dtype == np.int32


def test_purge_flags_never_delete_a_pair(tmp_path, gsegutils):
    cfg = ours.LazyDiskCacheConfig(cache_path=tmp_path, enable_caching=True, purge_disk_on_gc=True)
    s = ours.DiskBackedStore(config=cfg, factory=ours.DiskBackedNDArray)
    s.add_data_to_store("k", np.arange(4), purge_disk_on_gc_override=True)
    s.offload(pickle_container=True)
    assert s["k"].purge_disk_on_gc is False  # as written in the pair (see the module's notes)
    s.close()
    del s
    import gc

    gc.collect()
    assert (tmp_path / "k.npy").exists() and (tmp_path / "k.meta.json").exists()
    g = gsegutils.DiskBackedStore(config=gsegutils.LazyDiskCacheConfig(cache_path=tmp_path), factory=gsegutils.DiskBackedNDArray)
    np.testing.assert_array_equal(np.asarray(g["k"]), np.arange(4))


def test_constructor_arguments_and_checks(tmp_path):
    cfg = ours.LazyDiskCacheConfig(cache_path=tmp_path).updated(enable_caching=True)
    assert cfg.as_kwargs()["enable_caching"] is True
    assert ours.LazyDiskCacheConfig.from_kwargs(cfg.as_kwargs()) == cfg
    assert cfg.extend_cache_path("sub").cache_path == tmp_path / "sub"
    s = ours.DiskBackedStore(
        config=cfg,
        factory=ours.DiskBackedNDArray,
        value_type=ours.DiskBackedNDArray,
        validator=lambda v: v.shape != (0,),
    )
    with pytest.raises(TypeError, match="validator"):
        s["empty"] = ours.DiskBackedNDArray(np.zeros(0))
    with pytest.raises(TypeError):
        s["raw"] = np.zeros(3)
    with pytest.raises(ours.StoreKeyError):
        s["a/b"] = ours.DiskBackedNDArray(np.zeros(3))
    assert not ours.is_valid_store_key("CON.txt") and ours.is_valid_store_key("ＣＯＮ")
    s["ok"] = ours.DiskBackedNDArray(np.ones(3))
    assert isinstance(s.store["ok"], ours.DiskBackedNDArray)
    assert s.cache_dir == tmp_path
    assert repr(s) == "<DiskBackedStore(['ok'])>"
    e = ours.DiskBackedNDArray(np.arange(5.0), enable_caching=True)
    e.offload()  # standalone: a private file
    assert e.offloaded
    assert e[1] == 1.0 and not e.offloaded
    s.close()
