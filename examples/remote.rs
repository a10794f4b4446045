//! A store on S3-compatible object storage: two nodes and an offline reader.
//!
//! Node A writes tiles (with attributes) to `s3://BUCKET/PREFIX`, durably:
//! each `insert_durable` returns once the object store committed it. Node B,
//! with its own cache directory, lists and reads them (downloaded once,
//! then memory-mapped). Then node A's cache directory is opened offline and
//! read-only, as it would be while the server is unreachable: the entries
//! it holds still read.
//!
//! On a local test server (moto, which `scripts/test.sh` installs into
//! `./.venv`):
//!
//! ```text
//! .venv/bin/moto_server -H 127.0.0.1 -p 5000 &
//! export AWS_ENDPOINT=http://127.0.0.1:5000 AWS_ALLOW_HTTP=true \
//!        AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1
//! curl -X PUT "$AWS_ENDPOINT/ndo-demo"          # create the bucket
//! cargo run --features remote --example remote -- s3://ndo-demo/clouds
//! cargo run --features remote --bin ndoffload -- ls s3://ndo-demo/clouds
//! ```
//!
//! Give `--cache DIR` to keep node A's cache directory (default: a temporary
//! directory). A misconfiguration (no `AWS_ALLOW_HTTP` for an `http://`
//! endpoint, no credentials, a missing bucket, no server) fails at `open`
//! with a message that says what to set.

use std::path::PathBuf;

use ndarray::{Array2, Ix2};
use ndarray_offload::remote::RemoteOptions;
use ndarray_offload::StoreBuilder;
use serde_json::json;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let Some(url) = args.next() else {
        eprintln!("usage: remote s3://BUCKET/PREFIX [--cache DIR]");
        std::process::exit(2);
    };
    let tmp = tempfile::tempdir()?;
    let cache_a = match (args.next().as_deref(), args.next()) {
        (Some("--cache"), Some(dir)) => PathBuf::from(dir),
        _ => tmp.path().join("node-a"),
    };
    let cache_b = tmp.path().join("node-b");

    // Node A: the cache directory is the store's directory; the object
    // store is the durable home. Configuration comes from the AWS_*
    // variables (RemoteOptions::config adds to them).
    let a = StoreBuilder::new(&cache_a)
        .remote(&url)
        .memory_budget("64MiB")
        .open()?;
    for i in 0..4 {
        let name = format!("tile_{i}");
        let xyz = Array2::from_shape_fn((10_000, 3), |(r, c)| (i * 100_000 + r * 3 + c) as f64);
        a.insert_opts(
            &name,
            xyz,
            &ndarray_offload::InsertOptions::new().attrs(json!({ "tile": i, "crs": "EPSG:2056" })),
        )?;
    }
    // Uploaded and committed when it returns: any node now sees them.
    a.flush()?;
    println!("node A: committed {:?} to {url}", a.keys());
    a.close()?;

    // Node B: another cache directory (another machine, say).
    let b = StoreBuilder::new(&cache_b)
        .remote(&url)
        .read_only(true)
        .open()?;
    let mut total = 0.0;
    for name in b.keys() {
        let t = b.get::<f64, Ix2>(&name)?; // downloaded once, then mapped
        total += t.read()?.sum();
        let info = b.info(&name)?;
        println!(
            "node B: {name} {:?} {} attrs {}",
            info.shape,
            info.dtype,
            serde_json::Value::Object(info.attrs.clone())
        );
    }
    println!("node B: read {} entries, sum {total}", b.len());
    drop(b);

    // Offline: node A's cache directory without the object store (here the
    // server is still up; the handle just makes no request). Read-only.
    let offline = StoreBuilder::new(&cache_a)
        .remote_with(&url, RemoteOptions::default().with_offline(true))
        .read_only(true)
        .open()?;
    let t = offline.get::<f64, Ix2>("tile_3")?;
    println!(
        "offline: {} entries in the cache of node A; tile_3[0, 0] = {}",
        offline.len(),
        t.read()?[[0, 0]]
    );
    Ok(())
}
