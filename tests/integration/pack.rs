//! Packs: round trips, lookups, samples, compression, shards, integrity,
//! crash safety and numpy interoperability.

use std::path::{Path, PathBuf};

use ndarray::{array, Array, Array1, Array2, Array3, ArrayD, Ix1, Ix2, Ix3, IxDyn, ShapeBuilder};
use ndarray_offload::pack::{
    Compression, PackKey, PackReader, PackSet, PackWriter, Sample, ShardWriter,
};
use ndarray_offload::Error;
use num_complex::Complex;
use serde_json::json;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn entries_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn round_trip_many_dtypes_and_shapes() {
    let dir = tmp();
    let path = dir.path().join("a.pack");
    let mut w = PackWriter::create(&path).unwrap();
    w.append(
        "f32",
        &Array2::<f32>::from_shape_fn((3, 5), |(i, j)| (i * 10 + j) as f32),
    )
    .unwrap();
    w.append("f64", &array![1.5f64, -2.5]).unwrap();
    w.append("i8", &array![-1i8, 2]).unwrap();
    w.append("u64", &array![[u64::MAX]]).unwrap();
    w.append("bool", &array![true, false, true]).unwrap();
    w.append("c64", &array![Complex::new(1.0f32, -1.0)])
        .unwrap();
    w.append("c128", &array![Complex::new(2.0f64, 3.0)])
        .unwrap();
    w.append("scalar", &Array::from_elem((), 42i32)).unwrap();
    w.append("empty", &Array2::<f32>::zeros((0, 3))).unwrap();
    w.append("dyn", &ArrayD::<u16>::zeros(IxDyn(&[2, 1, 2, 1, 2])))
        .unwrap();
    // Fortran-order and strided input is stored in C order.
    let f = Array2::<i32>::from_shape_vec((2, 3).f(), vec![1, 2, 3, 4, 5, 6]).unwrap();
    w.append("fortran", &f).unwrap();
    let big = Array2::<i64>::from_shape_fn((4, 6), |(i, j)| (i * 6 + j) as i64);
    w.append("strided", &big.slice(ndarray::s![..;2, ..;3]))
        .unwrap();
    w.finish().unwrap();

    let r = PackReader::open(&path).unwrap();
    assert_eq!(r.len(), 12);
    let a = r.get::<f32, Ix2>("f32").unwrap();
    assert!(a.is_view());
    assert_eq!(a[[2, 4]], 24.0);
    assert_eq!(r.get::<f64, Ix1>("f64").unwrap(), array![1.5, -2.5]);
    assert_eq!(r.get::<i8, Ix1>("i8").unwrap(), array![-1i8, 2]);
    assert_eq!(r.get::<u64, Ix2>("u64").unwrap()[[0, 0]], u64::MAX);
    assert_eq!(
        r.get::<bool, Ix1>("bool").unwrap(),
        array![true, false, true]
    );
    assert_eq!(
        r.get::<Complex<f32>, Ix1>("c64").unwrap()[0],
        Complex::new(1.0, -1.0)
    );
    assert_eq!(
        r.get::<Complex<f64>, Ix1>("c128").unwrap()[0],
        Complex::new(2.0, 3.0)
    );
    assert_eq!(r.get::<i32, ndarray::Ix0>("scalar").unwrap()[()], 42);
    assert_eq!(r.get::<f32, Ix2>("empty").unwrap().shape(), &[0, 3]);
    assert_eq!(
        r.get::<u16, IxDyn>("dyn").unwrap().shape(),
        &[2, 1, 2, 1, 2]
    );
    assert_eq!(r.get::<i32, Ix2>("fortran").unwrap(), f);
    assert_eq!(
        r.get::<i64, Ix2>("strided").unwrap(),
        big.slice(ndarray::s![..;2, ..;3])
    );
    r.verify().unwrap();
}

#[test]
fn typed_errors_for_wrong_dtype_ndim_and_key() {
    let dir = tmp();
    let path = dir.path().join("a.pack");
    let mut w = PackWriter::create(&path).unwrap();
    w.append(1u64, &array![[1.0f32]]).unwrap();
    w.finish().unwrap();
    let r = PackReader::open(&path).unwrap();
    assert!(matches!(
        r.get::<f64, Ix2>(1u64),
        Err(Error::DtypeMismatch { ref expected, ref found, .. }) if expected == "<f8" && found == "<f4"
    ));
    assert!(matches!(
        r.get::<f32, Ix1>(1u64),
        Err(Error::DimensionMismatch {
            expected: 1,
            found: 2,
            ..
        })
    ));
    assert!(matches!(
        r.get::<f32, Ix2>(2u64),
        Err(Error::KeyNotFound { .. })
    ));
    assert!(matches!(
        r.get::<f32, Ix2>("1"),
        Err(Error::KeyNotFound { .. })
    ));
    assert!(r.get::<f32, IxDyn>(1u64).is_ok());
}

#[test]
fn duplicate_keys_are_refused_at_append_and_the_writer_goes_on() {
    let dir = tmp();
    let path = dir.path().join("a.pack");
    let mut w = PackWriter::create(&path).unwrap();
    w.append("k", &array![1u8]).unwrap();
    w.append(7u64, &array![1u8]).unwrap();
    assert!(matches!(
        w.append("k", &array![2u8]),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        w.append_sample(7u64, &Sample::new()),
        Err(Error::InvalidInput { .. })
    ));
    w.append("7", &array![3u8]).unwrap(); // a string "7" is another key
    w.finish().unwrap();
    let r = PackReader::open(&path).unwrap();
    assert_eq!(r.len(), 3);
    assert_eq!(r.get::<u8, Ix1>("k").unwrap()[0], 1);
    r.verify().unwrap();
}

#[test]
fn unfinished_writer_leaves_nothing_and_finish_replaces_atomically() {
    let dir = tmp();
    let path = dir.path().join("a.pack");
    {
        let mut w = PackWriter::create(&path).unwrap();
        w.append("x", &Array1::<f64>::zeros(1000)).unwrap();
        assert_eq!(entries_in(dir.path()).len(), 1); // the temporary file
    }
    assert!(entries_in(dir.path()).is_empty());

    let mut w = PackWriter::create(&path).unwrap();
    w.append("old", &array![1u8]).unwrap();
    w.finish().unwrap();
    let old = PackReader::open(&path).unwrap();
    let mut w = PackWriter::create(&path).unwrap();
    w.append("new", &array![2u8]).unwrap();
    w.finish().unwrap();
    // The old reader keeps its mapping of the old file.
    assert_eq!(old.get::<u8, Ix1>("old").unwrap()[0], 1);
    let new = PackReader::open(&path).unwrap();
    assert!(!new.contains("old").unwrap());
    assert_eq!(entries_in(dir.path()), ["a.pack"]);
}

#[test]
fn lookups_at_every_index_shape() {
    // Sizes around the bucket-count boundaries of the hash index (one
    // bucket per 16 entries, rounded up to a power of two).
    for n in [
        0u64, 1, 2, 15, 16, 17, 32, 33, 1_024, 1_025, 65_536, 65_537, 70_000,
    ] {
        let dir = tmp();
        let path = dir.path().join("a.pack");
        let mut w = PackWriter::create(&path).unwrap();
        for i in 0..n {
            if i % 2 == 0 {
                w.append(i, &array![i]).unwrap();
            } else {
                w.append(format!("k{i}").as_str(), &array![i]).unwrap();
            }
        }
        w.finish().unwrap();
        let r = PackReader::open(&path).unwrap();
        assert_eq!(r.len() as u64, n);
        let step = (n / 500).max(1);
        for i in (0..n).step_by(step as usize) {
            let v = if i % 2 == 0 {
                r.get::<u64, Ix1>(i).unwrap()
            } else {
                r.get::<u64, Ix1>(format!("k{i}").as_str()).unwrap()
            };
            assert_eq!(v[0], i, "n={n} i={i}");
        }
        assert!(!r.contains(n + 1).unwrap());
        assert!(!r.contains("absent").unwrap());
        if n <= 1_025 {
            r.verify().unwrap();
        }
    }
}

#[test]
fn samples_round_trip_as_one_unit() {
    let dir = tmp();
    let path = dir.path().join("s.pack");
    let s = Sample::new()
        .with_array(
            "image",
            &Array3::<u8>::from_shape_fn((3, 3, 3), |(a, b, c)| (a * 9 + b * 3 + c) as u8),
        )
        .unwrap()
        .with_array("label", &array![2i64])
        .unwrap()
        .with_array("points", &Array2::<f32>::from_elem((5, 3), 0.5))
        .unwrap()
        .with_meta(json!({"key": 17, "tags": ["a", "b"]}));
    let mut w = PackWriter::create(&path).unwrap();
    w.append_sample("sample-0", &s).unwrap();
    w.append_sample(1u64, &Sample::new().with_meta(json!(null)))
        .unwrap();
    w.append_with_meta(2u64, &array![1.0f32], &json!({"plain": true}))
        .unwrap();
    w.finish().unwrap();

    let r = PackReader::open(&path).unwrap();
    let e = r.entry("sample-0").unwrap();
    assert!(e.is_sample());
    assert_eq!(e.len(), 3);
    assert_eq!(e.to_sample().unwrap(), s);
    assert_eq!(
        e.meta().unwrap(),
        Some(json!({"key": 17, "tags": ["a", "b"]}))
    );
    let img = e.array("image").unwrap().get::<u8, Ix3>().unwrap();
    assert!(img.is_view());
    assert_eq!(img[[2, 2, 2]], 26);
    assert!(matches!(
        e.get::<u8, Ix3>(),
        Err(Error::InvalidInput { .. })
    ));
    assert!(e.array("nope").unwrap_err().is_not_found());
    let empty = r.entry(1u64).unwrap();
    assert!(empty.is_empty() && empty.has_meta());
    assert_eq!(empty.meta().unwrap(), Some(json!(null)));
    let plain = r.entry(2u64).unwrap();
    assert!(!plain.is_sample());
    assert_eq!(plain.meta().unwrap(), Some(json!({"plain": true})));
    assert_eq!(
        Sample::new()
            .with_array("x", &array![1u8])
            .unwrap()
            .get::<u8, Ix1>("x")
            .unwrap()[0],
        1
    );
}

#[test]
fn iteration_in_file_and_key_order_and_read_ranges() {
    let dir = tmp();
    let path = dir.path().join("a.pack");
    let keys: Vec<PackKey<'static>> = vec![
        "delta".into(),
        10u64.into(),
        "alpha".into(),
        2u64.into(),
        "Zulu".into(),
        u64::MAX.into(),
        "".into(),
    ];
    let mut w = PackWriter::create(&path).unwrap();
    for (i, k) in keys.iter().enumerate() {
        w.append(k, &array![i as u32]).unwrap();
    }
    w.finish().unwrap();
    let r = PackReader::open(&path).unwrap();
    let file_order: Vec<PackKey<'static>> = r
        .iter()
        .map(|e| e.unwrap().key().clone().into_owned())
        .collect();
    assert_eq!(file_order, keys);
    let key_order: Vec<PackKey<'static>> = r
        .iter_by_key()
        .map(|e| e.unwrap().key().clone().into_owned())
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(key_order, sorted);
    assert_eq!(key_order[0], PackKey::U64(2));
    let batch = r.read(2, 3).unwrap();
    let vals: Vec<u32> = batch
        .iter()
        .map(|e| e.get::<u32, Ix1>().unwrap()[0])
        .collect();
    assert_eq!(vals, [2, 3, 4]);
    assert!(batch.iter().all(|e| e.get::<u32, Ix1>().unwrap().is_view()));
    assert!(r.read(5, 3).is_err());
    assert!(r.read(usize::MAX, 2).is_err());
    assert!(r.entry_at(7).is_err());
}

#[test]
fn listing_for_inspectors() {
    let dir = tmp();
    let path = dir.path().join("a.pack");
    let mut w = PackWriter::create(&path).unwrap();
    w.append("a", &Array2::<f32>::zeros((2, 3))).unwrap();
    w.append_sample(
        5u64,
        &Sample::new()
            .with_array("x", &array![1i16])
            .unwrap()
            .with_meta(json!({"m": 1})),
    )
    .unwrap();
    w.finish().unwrap();
    let r = PackReader::open(&path).unwrap();
    let infos: Vec<_> = r.list().map(|i| i.unwrap()).collect();
    assert_eq!(infos.len(), 2);
    assert_eq!(infos[0].key, PackKey::from("a"));
    assert_eq!(infos[0].arrays[0].dtype, "<f4");
    assert_eq!(infos[0].arrays[0].shape, [2, 3]);
    assert_eq!(infos[0].arrays[0].compression, Compression::None);
    assert_eq!(infos[0].arrays[0].stored_len, 24);
    assert!(!infos[0].has_meta());
    assert!(infos[1].is_sample && infos[1].has_meta());
    assert_eq!(infos[1].arrays[0].name, "x");
    assert_eq!(infos[0].to_string(), "\"a\" <f4 [2, 3] none 24B");
    assert_eq!(infos[1].to_string(), "5 x: <i2 [1] none 2B meta 7B");
}

#[cfg(any(feature = "lz4", feature = "zstd"))]
#[test]
fn compressed_entries_decode_and_verify() {
    let dir = tmp();
    let path = dir.path().join("c.pack");
    let a = Array2::<f64>::from_shape_fn((64, 64), |(i, j)| ((i * j) % 7) as f64);
    let mut w = PackWriter::create(&path).unwrap();
    let codecs: Vec<Compression> = [
        (cfg!(feature = "lz4"), Compression::Lz4),
        (cfg!(feature = "zstd"), Compression::Zstd(3)),
    ]
    .into_iter()
    .filter_map(|(on, c)| on.then_some(c))
    .collect();
    for (i, c) in codecs.iter().enumerate() {
        w.set_compression(*c).unwrap();
        w.append(i as u64, &a).unwrap();
        w.append_sample(
            format!("s{i}").as_str(),
            &Sample::new().with_array("a", &a).unwrap(),
        )
        .unwrap();
    }
    #[cfg(feature = "zstd")]
    assert!(matches!(
        w.set_compression(Compression::Zstd(1000)),
        Err(Error::InvalidInput { .. })
    ));
    w.set_compression(Compression::None).unwrap();
    w.append("raw", &a).unwrap();
    w.finish().unwrap();
    let r = PackReader::open(&path).unwrap();
    for (i, c) in codecs.iter().enumerate() {
        let e = r.entry(i as u64).unwrap();
        let arr = e.single().unwrap();
        assert_eq!(arr.compression().to_string(), c.to_string());
        assert!(arr.stored_len() < arr.raw_len() as u64);
        let got = e.get::<f64, Ix2>().unwrap();
        assert!(!got.is_view());
        assert_eq!(got, a);
        assert!(matches!(
            arr.view::<f64, Ix2>(),
            Err(Error::Unsupported { .. })
        ));
        let s = r
            .entry(format!("s{i}").as_str())
            .unwrap()
            .to_sample()
            .unwrap();
        assert_eq!(s.get::<f64, Ix2>("a").unwrap(), a);
    }
    assert!(r.get::<f64, Ix2>("raw").unwrap().is_view());
    r.verify().unwrap();

    // A corrupted compressed payload is caught by its checksum before decoding.
    let mut bytes = std::fs::read(&path).unwrap();
    let stored = r
        .entry(0u64)
        .unwrap()
        .single()
        .unwrap()
        .stored_bytes()
        .to_vec();
    let off = bytes
        .windows(stored.len())
        .position(|w| w == stored)
        .unwrap();
    bytes[off + 3] ^= 0xff;
    let bad = dir.path().join("bad.pack");
    std::fs::write(&bad, &bytes).unwrap();
    let r2 = PackReader::open(&bad).unwrap();
    assert!(matches!(
        r2.get::<f64, Ix2>(0u64),
        Err(Error::Corrupt { .. })
    ));
    assert!(r2.verify().is_err());
}

#[cfg(not(feature = "lz4"))]
#[test]
fn disabled_codec_is_a_typed_error() {
    let dir = tmp();
    let mut w = PackWriter::create(dir.path().join("a.pack")).unwrap();
    assert!(matches!(
        w.set_compression(Compression::Lz4),
        Err(Error::Unsupported { .. })
    ));
}

#[test]
fn shards_written_in_parallel_read_back_as_one_stream() {
    let dir = tmp();
    let stream = (0..1000u64).map(|i| {
        let s = Sample::new()
            .with_array("image", &Array3::<f32>::from_elem((3, 3, 3), i as f32))
            .unwrap()
            .with_array("label", &array![(i % 2) as i64])
            .unwrap()
            .with_meta(json!({ "key": i }));
        (PackKey::from(format!("sample-{i}")), s)
    });
    let set = ShardWriter::new(dir.path(), "train")
        .shards(4)
        .write(stream)
        .unwrap();
    assert_eq!(set.len(), 1000);
    assert_eq!(set.shards().len(), 4);
    set.verify().unwrap();
    let set = PackSet::open(dir.path().join("train.packset.json")).unwrap();
    for (i, e) in set.iter().enumerate() {
        let e = e.unwrap();
        assert_eq!(e.key().as_str(), Some(format!("sample-{i}").as_str()));
        assert_eq!(e.meta().unwrap(), Some(json!({ "key": i })));
        assert_eq!(
            e.array("image").unwrap().get::<f32, Ix3>().unwrap()[[1, 1, 1]],
            i as f32
        );
    }
    assert_eq!(
        set.entry("sample-517")
            .unwrap()
            .array("label")
            .unwrap()
            .get::<i64, Ix1>()
            .unwrap()[0],
        1
    );
    assert!(set.entry("sample-1000").unwrap_err().is_not_found());

    // Shards can be read in parallel threads (the readers are Sync).
    let total: usize = std::thread::scope(|s| {
        let hs: Vec<_> = set
            .shards()
            .iter()
            .map(|r| s.spawn(move || r.iter().filter(|e| e.is_ok()).count()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(total, 1000);
}

#[test]
fn shard_writer_refuses_duplicates_and_publishes_nothing() {
    let dir = tmp();
    let stream = [1u64, 2, 3, 2]
        .into_iter()
        .map(|i| (PackKey::from(i), Sample::new()));
    let err = ShardWriter::new(dir.path(), "dup")
        .shards(2)
        .write(stream)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }));
    assert!(entries_in(dir.path()).is_empty());
}

#[test]
fn one_reader_serves_many_threads() {
    let dir = tmp();
    let path = dir.path().join("t.pack");
    let mut w = PackWriter::create(&path).unwrap();
    for i in 0..5000u64 {
        w.append(i, &Array1::<u64>::from_elem(8, i)).unwrap();
    }
    w.finish().unwrap();
    let r = std::sync::Arc::new(PackReader::open(&path).unwrap());
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            let r = r.clone();
            std::thread::spawn(move || {
                for i in (t..5000).step_by(4) {
                    let v = r.get::<u64, Ix1>(i).unwrap();
                    assert!(v.is_view() && v.iter().all(|&x| x == i));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

fn small_pack(dir: &Path) -> PathBuf {
    let path = dir.join("small.pack");
    let mut w = PackWriter::create(&path).unwrap();
    for i in 0..40u64 {
        w.append_with_meta(i, &Array1::<f32>::from_elem(10, i as f32), &json!({"i": i}))
            .unwrap();
    }
    w.append_sample(
        "s",
        &Sample::new().with_array("b", &array![true, false]).unwrap(),
    )
    .unwrap();
    w.finish().unwrap();
    path
}

/// Reads every entry of a pack through every read path; returns an error
/// or `Ok`, and must never panic.
fn exercise(path: &Path) -> Result<(), Error> {
    let r = PackReader::open(path)?;
    for e in r.iter() {
        let e = e?;
        e.meta()?;
        for a in e.arrays() {
            let a = a?;
            match a.dtype() {
                "<f4" => drop(a.get_verified::<f32, IxDyn>()?),
                "|b1" => drop(a.get_verified::<bool, IxDyn>()?),
                _ => {}
            }
        }
    }
    for e in r.iter_by_key() {
        e?;
    }
    for i in 0..45u64 {
        let _ = r.contains(i)?;
    }
    r.contains("s")?;
    r.list().try_for_each(|i| i.map(drop))?;
    r.verify()?;
    Ok(())
}

/// Byte offsets of the trailer fields used below (docs/format.md).
const T_INDEX_OFF: usize = 32;
const T_BUCKETS: usize = 40;
const T_DIR_OFF: usize = 48;
const T_INDEX_CRC: usize = 120;

fn le64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Recomputes the index and trailer checksums of a pack image.
fn reseal(b: &mut [u8]) {
    let t = b.len() - 128;
    let index_off = le64_at(b, t + T_INDEX_OFF) as usize;
    let crc = crc32fast::hash(&b[index_off..t]);
    b[t + T_INDEX_CRC..t + T_INDEX_CRC + 4].copy_from_slice(&crc.to_le_bytes());
    let crc = crc32fast::hash(&b[t..t + 124]);
    b[t + 124..].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn bucket_directory_is_consistent_and_checked() {
    let dir = tmp();
    let path = dir.path().join("a.pack");
    let n = 3_000u64;
    let mut w = PackWriter::create(&path).unwrap();
    for i in 0..n {
        w.append(i, &array![i]).unwrap();
    }
    w.finish().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let t = bytes.len() - 128;
    let buckets = le64_at(&bytes, t + T_BUCKETS);
    let dir_off = le64_at(&bytes, t + T_DIR_OFF) as usize;
    // 3,000 / 16 rounded up to a power of two.
    assert_eq!(buckets, 256);
    assert_eq!(dir_off + 8 * (buckets as usize + 1), t);
    // dir[b] is the first leaf record of bucket b: the records between
    // dir[b] and dir[b+1] are exactly those whose top 8 hash bits are b.
    let leaf = dir_off - 16 * n as usize;
    let slot = |b: usize| le64_at(&bytes, dir_off + 8 * b);
    assert_eq!((slot(0), slot(buckets as usize)), (0, n));
    for b in 0..buckets as usize {
        assert!(slot(b) <= slot(b + 1));
        for i in slot(b)..slot(b + 1) {
            let h = le64_at(&bytes, leaf + 16 * i as usize);
            assert_eq!(h >> 56, b as u64);
        }
    }
    PackReader::open(&path).unwrap().verify().unwrap();

    // A directory slot moved by one, with every checksum made to match:
    // verify() finds the disagreement; lookups stay typed.
    let bad = dir.path().join("bad.pack");
    for (b, delta) in [(1usize, 1i64), (7, -1), (buckets as usize, -1), (0, 1)] {
        let mut c = bytes.clone();
        let v = (slot(b) as i64 + delta) as u64;
        c[dir_off + 8 * b..dir_off + 8 * b + 8].copy_from_slice(&v.to_le_bytes());
        reseal(&mut c);
        std::fs::write(&bad, &c).unwrap();
        let r = PackReader::open(&bad).unwrap();
        match r.verify() {
            Err(Error::Corrupt { path, reason }) => {
                assert_eq!(path, bad);
                assert!(reason.contains("bucket directory"), "{reason}");
            }
            other => panic!("slot {b}: {other:?}"),
        }
        for i in 0..n {
            match r.get::<u64, Ix1>(i) {
                Ok(a) => assert_eq!(a[0], i),
                Err(Error::Corrupt { .. } | Error::KeyNotFound { .. }) => {}
                Err(e) => panic!("{e:?}"),
            }
        }
    }
    // A slot past the leaf is refused by the lookup itself.
    let mut c = bytes.clone();
    c[dir_off + 8..dir_off + 16].copy_from_slice(&(n + 1).to_le_bytes());
    reseal(&mut c);
    std::fs::write(&bad, &c).unwrap();
    let r = PackReader::open(&bad).unwrap();
    assert!((0..n).any(|i| matches!(r.get::<u64, Ix1>(i), Err(Error::Corrupt { .. }))));
}

#[test]
fn format_version_1_is_refused_by_name() {
    let dir = tmp();
    let path = small_pack(dir.path());
    let mut b = std::fs::read(&path).unwrap();
    let t = b.len() - 128;
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    b[t + 8..t + 12].copy_from_slice(&1u32.to_le_bytes());
    reseal(&mut b);
    let old = dir.path().join("old.pack");
    std::fs::write(&old, &b).unwrap();
    match PackReader::open(&old) {
        Err(Error::Unsupported { path, reason }) => {
            assert_eq!(path, old);
            assert!(reason.contains("version 1"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn truncation_at_every_length_is_a_typed_error() {
    let dir = tmp();
    let path = small_pack(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    exercise(&path).unwrap();
    let cut = dir.path().join("cut.pack");
    for len in (0..bytes.len()).step_by(7).chain([bytes.len() - 1]) {
        std::fs::write(&cut, &bytes[..len]).unwrap();
        match exercise(&cut) {
            Err(Error::Truncated { ref path, .. }) | Err(Error::Corrupt { ref path, .. }) => {
                assert_eq!(path, &cut)
            }
            other => panic!("length {len}: {other:?}"),
        }
    }
}

#[test]
fn every_flipped_byte_is_caught_by_verify() {
    let dir = tmp();
    let path = small_pack(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    let bad = dir.path().join("bad.pack");
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x01;
        std::fs::write(&bad, &b).unwrap();
        let res = exercise(&bad);
        // Padding bytes are covered by nothing, everything else is.
        if res.is_ok() {
            assert_eq!(bytes[i], 0, "flip at {i} went unnoticed");
        }
    }
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let dir = tmp();
            let p = dir.path().join("r.pack");
            std::fs::write(&p, &bytes).unwrap();
            let _ = exercise(&p);
        }

        #[test]
        fn random_corruptions_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in proptest::option::of(any::<prop::sample::Index>()),
        ) {
            let dir = tmp();
            let path = small_pack(dir.path());
            let mut bytes = std::fs::read(&path).unwrap();
            for (at, v) in edits {
                let i = at.index(bytes.len());
                bytes[i] = v;
            }
            if let Some(c) = cut {
                bytes.truncate(c.index(bytes.len()));
            }
            std::fs::write(&path, &bytes).unwrap();
            match exercise(&path) {
                Ok(()) => {}
                Err(Error::Corrupt { .. } | Error::Truncated { .. } | Error::Unsupported { .. }
                    | Error::KeyNotFound { .. } | Error::DtypeMismatch { .. }
                    | Error::DimensionMismatch { .. } | Error::InvalidInput { .. }) => {}
                Err(e) => prop_assert!(false, "unexpected error {e:?}"),
            }
        }

        #[test]
        fn key_order_matches_sorted_keys(
            strs in proptest::collection::btree_set("[ab\\x00\\x7f-\\x{ff}]{0,12}", 0..200),
            ints in proptest::collection::btree_set(any::<u64>(), 0..50),
        ) {
            let dir = tmp();
            let path = dir.path().join("o.pack");
            let mut keys: Vec<PackKey<'static>> = strs.iter().cloned().map(PackKey::from).collect();
            keys.extend(ints.iter().copied().map(PackKey::from));
            // Append in a scrambled order.
            keys.reverse();
            let third = keys.len() / 3;
            keys.rotate_left(third);
            let mut w = PackWriter::create(&path).unwrap();
            for k in &keys {
                w.append(k, &array![0u8]).unwrap();
            }
            w.finish().unwrap();
            let r = PackReader::open(&path).unwrap();
            r.verify().unwrap();
            let got: Vec<PackKey<'static>> =
                r.iter_by_key().map(|e| e.unwrap().key().clone().into_owned()).collect();
            keys.sort();
            prop_assert_eq!(got, keys);
        }

        #[test]
        fn random_packs_round_trip(
            arrays in proptest::collection::vec(
                (proptest::collection::vec(0usize..4, 0..4), any::<bool>(), any::<bool>()),
                0..30,
            )
        ) {
            let dir = tmp();
            let path = dir.path().join("p.pack");
            let mut w = PackWriter::create(&path).unwrap();
            let mut expect = vec![];
            for (i, (shape, strkey, meta)) in arrays.iter().enumerate() {
                let a = ArrayD::<i32>::from_shape_fn(IxDyn(shape), |ix| { use ndarray::Dimension; ix.as_array_view().sum() as i32 + i as i32 });
                let k: PackKey<'static> = if *strkey { format!("k{i}").into() } else { (i as u64).into() };
                if *meta {
                    w.append_with_meta(&k, &a, &json!(i)).unwrap();
                } else {
                    w.append(&k, &a).unwrap();
                }
                expect.push((k, a, *meta));
            }
            w.finish().unwrap();
            let r = PackReader::open(&path).unwrap();
            r.verify().unwrap();
            for (i, (k, a, meta)) in expect.iter().enumerate() {
                let e = r.entry(k).unwrap();
                prop_assert_eq!(e.get::<i32, IxDyn>().unwrap(), a.view());
                prop_assert_eq!(e.meta().unwrap(), meta.then(|| json!(i)));
            }
        }
    }
}

/// Writes a pack from Rust and reads it with `python/ndoffload_pack.py`
/// (numpy + standard library only), checking values, metadata, key hashes
/// and every checksum. Skipped when numpy is missing, except under CI.
#[test]
fn numpy_reader_reads_what_rust_writes() {
    let python = std::env::var("NDOFFLOAD_PYTHON").unwrap_or_else(|_| "python3".into());
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let probe = std::process::Command::new(&python)
        .args(["-c", "import numpy"])
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        assert!(!ci, "CI=true but {python} cannot import numpy: {probe:?}");
        println!("skipped: {python} cannot import numpy");
        return;
    }

    let dir = tmp();
    let path = dir.path().join("interop.pack");
    let mut w = PackWriter::create(&path).unwrap();
    w.append(
        "f32",
        &Array2::<f32>::from_shape_fn((3, 4), |(i, j)| i as f32 * 10.0 + j as f32),
    )
    .unwrap();
    w.append(7u64, &array![1i64, -2, 3]).unwrap();
    w.append("bool", &array![true, false]).unwrap();
    w.append("c128", &array![Complex::new(1.5f64, -2.0)])
        .unwrap();
    w.append("scalar", &Array::from_elem((), 2.5f64)).unwrap();
    w.append("empty", &Array2::<u16>::zeros((0, 2))).unwrap();
    let f = Array2::<i32>::from_shape_vec((2, 3).f(), vec![1, 2, 3, 4, 5, 6]).unwrap();
    w.append("fortran", &f).unwrap();
    w.append_with_meta(
        "with-meta",
        &array![9u8],
        &json!({"label": "cat", "n": [1, 2]}),
    )
    .unwrap();
    w.append_sample(
        "sample",
        &Sample::new()
            .with_array(
                "image",
                &Array3::<u8>::from_shape_fn((2, 2, 3), |(a, b, c)| (a * 6 + b * 3 + c) as u8),
            )
            .unwrap()
            .with_array("label", &array![4i64])
            .unwrap()
            .with_meta(json!({"id": 1})),
    )
    .unwrap();
    w.finish().unwrap();

    let script = r#"
import json, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from ndoffload_pack import read_pack, key_hash, FORMAT_VERSION
p = read_pack(sys.argv[2])
def arr(a):
    if a.dtype.kind == "c":
        return {"dtype": a.dtype.str, "shape": list(a.shape), "re": a.real.ravel().tolist(), "im": a.imag.ravel().tolist()}
    return {"dtype": a.dtype.str, "shape": list(a.shape), "values": a.ravel().tolist()}
out = {"version": FORMAT_VERSION, "keys": [[type(k).__name__, k] for k in p], "entries": {}}
for k, v in p.items():
    if isinstance(v, np.ndarray):
        out["entries"][str(k)] = arr(v)
    else:
        out["entries"][str(k)] = {"arrays": {n: arr(a) for n, a in v["arrays"].items()}, "meta": v["meta"]}
out["hashes"] = [str(key_hash("tile_0001")), str(key_hash(7))]
print(json.dumps(out))
"#;
    let py_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("python");
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&py_dir)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], 2);
    assert_eq!(
        v["keys"],
        json!([
            ["str", "f32"],
            ["int", 7],
            ["str", "bool"],
            ["str", "c128"],
            ["str", "scalar"],
            ["str", "empty"],
            ["str", "fortran"],
            ["str", "with-meta"],
            ["str", "sample"]
        ])
    );
    let e = &v["entries"];
    assert_eq!(e["f32"]["dtype"], "<f4");
    assert_eq!(e["f32"]["shape"], json!([3, 4]));
    assert_eq!(e["f32"]["values"][11], 23.0);
    assert_eq!(e["7"]["values"], json!([1, -2, 3]));
    assert_eq!(
        e["bool"],
        json!({"dtype": "|b1", "shape": [2], "values": [true, false]})
    );
    assert_eq!(e["c128"]["re"], json!([1.5]));
    assert_eq!(e["c128"]["im"], json!([-2.0]));
    assert_eq!(
        e["scalar"],
        json!({"dtype": "<f8", "shape": [], "values": [2.5]})
    );
    assert_eq!(e["empty"]["shape"], json!([0, 2]));
    assert_eq!(e["fortran"]["values"], json!([1, 3, 5, 2, 4, 6]));
    assert_eq!(e["with-meta"]["meta"], json!({"label": "cat", "n": [1, 2]}));
    assert_eq!(e["with-meta"]["arrays"][""]["values"], json!([9]));
    assert_eq!(e["sample"]["meta"], json!({"id": 1}));
    assert_eq!(e["sample"]["arrays"]["image"]["shape"], json!([2, 2, 3]));
    assert_eq!(e["sample"]["arrays"]["image"]["values"][11], 11);
    assert_eq!(e["sample"]["arrays"]["label"]["values"], json!([4]));
    // The Python key hash is the one the Rust index uses (pinned in
    // src/pack/format.rs).
    assert_eq!(
        v["hashes"],
        json!([
            0x4cb0_4eae_e593_5bf2u64.to_string(),
            0x2a59_d254_0a4d_ed6cu64.to_string()
        ])
    );

    // The reader refuses a corrupted payload.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[64] ^= 0xff;
    let bad = dir.path().join("bad.pack");
    std::fs::write(&bad, &bytes).unwrap();
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg("import sys; sys.path.insert(0, sys.argv[1]); from ndoffload_pack import read_pack; read_pack(sys.argv[2])")
        .arg(&py_dir)
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("checksum mismatch"));

    // A pack with several buckets (1,000 entries, 64 buckets); then the same
    // with one directory slot off by one and every checksum resealed.
    let many = dir.path().join("many.pack");
    let mut w = PackWriter::create(&many).unwrap();
    for i in 0..1_000u64 {
        w.append(i, &array![i]).unwrap();
    }
    w.finish().unwrap();
    let count = "import sys; sys.path.insert(0, sys.argv[1]); from ndoffload_pack import read_pack; p = read_pack(sys.argv[2]); assert sorted(p) == list(range(1000)) and all(int(v[0]) == k for k, v in p.items()); print(len(p))";
    let run = |path: &Path| {
        std::process::Command::new(&python)
            .arg("-c")
            .arg(count)
            .arg(&py_dir)
            .arg(path)
            .output()
            .unwrap()
    };
    let out = run(&many);
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1000");
    let mut bytes = std::fs::read(&many).unwrap();
    let t = bytes.len() - 128;
    let dir_off = le64_at(&bytes, t + T_DIR_OFF) as usize;
    assert_eq!(le64_at(&bytes, t + T_BUCKETS), 64);
    bytes[dir_off + 8 * 3] ^= 1;
    reseal(&mut bytes);
    std::fs::write(&bad, &bytes).unwrap();
    let out = run(&bad);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bucket directory"));
}

/// Fails every file-system operation of a pack write in turn, through the
/// crate's I/O seam: each failure is a typed error, leaves no temporary
/// file, and leaves the previous pack at the path intact.
#[test]
fn injected_faults_leave_the_previous_pack_intact() {
    use ndarray_offload::__testing::{install, FaultPlan};

    let dir = tmp();
    let path = dir.path().join("f.pack");
    let mut w = PackWriter::create(&path).unwrap();
    w.append("old", &array![1u8]).unwrap();
    w.finish().unwrap();

    let write_new = || -> Result<(), Error> {
        let mut w = PackWriter::create(&path)?;
        for i in 0..200u64 {
            w.append(i, &Array1::<f64>::from_elem(1000, i as f64))?;
        }
        w.finish()
    };
    // Count the operations of a successful write (then put the old pack back).
    let counter = FaultPlan::fail_at(0);
    {
        let _g = install(counter.clone());
        write_new().unwrap();
    }
    let ops = counter.count();
    assert!(ops >= 5, "{:?}", counter.log());
    let mut w = PackWriter::create(&path).unwrap();
    w.append("old", &array![1u8]).unwrap();
    w.finish().unwrap();

    for n in 1..=ops {
        let plan = FaultPlan::fail_at(n).with_kind(std::io::ErrorKind::StorageFull);
        let res = {
            let _g = install(plan.clone());
            write_new()
        };
        let last = plan.log().last().map(|(op, _)| format!("{op:?}"));
        match res {
            Err(Error::DiskFull { .. }) => {}
            // A failed directory fsync after the rename is reported, but the
            // new pack is already in place.
            other => panic!("fault at op {n} ({last:?}): {other:?}"),
        }
        let names = entries_in(dir.path());
        assert_eq!(names, ["f.pack"], "fault at op {n} left {names:?}");
        let r = PackReader::open(&path).unwrap();
        if last.as_deref() != Some("SyncDir") {
            assert!(r.contains("old").unwrap(), "fault at op {n} ({last:?})");
        }
        r.verify().unwrap();
    }
}
