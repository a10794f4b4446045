//! The examples a new user runs first, run as they are (built by `cargo
//! test` next to the test binaries): one writer and several readers as
//! processes on one store, and a store on object storage (against moto).

use std::path::PathBuf;
use std::process::Command;

/// The example binary `name`, built by `cargo test` of the whole suite.
fn example(name: &str) -> PathBuf {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_ndoffload"))
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        exe.exists(),
        "{} not built: the whole suite (`cargo test --all-features`) builds the examples",
        exe.display()
    );
    exe
}

#[test]
fn processes_example_runs_a_writer_and_readers() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let out = Command::new(example("processes"))
        .args(["--dir", store.to_str().unwrap()])
        .args(["--readers", "3", "--tiles", "25"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("writer: 25 tiles, durable"), "{stdout}");
    for id in 0..3 {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("reader {id}: ")))
            .unwrap_or_else(|| panic!("no reader {id} in:\n{stdout}"));
        assert!(line.contains("25 tiles verified"), "{line}");
        // 25 tiles and `progress`, after the last refresh.
        assert!(
            line.ends_with(&format!("26 after {} refreshes", refreshes(line))),
            "{line}"
        );
    }
    assert!(stdout.contains("done: 1 writer and 3 readers"), "{stdout}");
    // The store the example left is whole.
    let s = ndarray_offload::DiskBackedStore::open_read_only(&store).unwrap();
    assert_eq!(s.len(), 26);
}

fn refreshes(line: &str) -> String {
    line.rsplit(" after ")
        .next()
        .and_then(|r| r.split(' ').next())
        .unwrap_or("")
        .to_string()
}

#[cfg(feature = "remote")]
#[test]
fn remote_example_writes_reads_and_reads_offline() {
    let Some(moto) = crate::remote::Moto::start() else {
        return;
    };
    let url = moto.url("example/clouds");
    let cache = tempfile::tempdir().unwrap();
    let mut c = Command::new(example("remote"));
    c.env_clear()
        .arg(&url)
        .args(["--cache", cache.path().to_str().unwrap()]);
    for (k, v) in moto.env() {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("node A: committed [\"tile_0\", \"tile_1\", \"tile_2\", \"tile_3\"]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("node B: tile_2 [10000, 3] <f8 attrs {\"crs\":\"EPSG:2056\",\"tile\":2}"),
        "{stdout}"
    );
    assert!(stdout.contains("node B: read 4 entries"), "{stdout}");
    assert!(
        stdout.contains("offline: 4 entries in the cache of node A; tile_3[0, 0] = 300000"),
        "{stdout}"
    );
    // The inspector lists what it wrote.
    let mut c = Command::new(env!("CARGO_BIN_EXE_ndoffload"));
    c.env_clear().args(["verify", &url]);
    for (k, v) in moto.env() {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "4 entries, all sound"
    );
}
