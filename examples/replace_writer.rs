//! A writer process for readers' tests (the Python package's among them):
//! replaces entries of a store over and over, durably.
//!
//! ```sh
//! cargo run --example replace_writer -- DIR SECONDS KEYS
//! ```
//!
//! Every version `v` of an entry is a `f64` array of `1000 + (v % 13) * 100`
//! elements, all equal to `v`: a reader checks that what it read is one
//! whole version (length and values agree). Prints the number of
//! replacements made.

use std::time::{Duration, Instant};

use ndarray::Array1;
use ndarray_offload::StoreBuilder;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or("usage: replace_writer DIR SECONDS KEYS")?;
    let secs: f64 = args.next().unwrap_or_else(|| "2".into()).parse()?;
    let keys: usize = args.next().unwrap_or_else(|| "4".into()).parse()?;
    let store = StoreBuilder::new(&dir).open()?;
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut v: u64 = 0;
    while Instant::now() < end {
        let k = (v as usize) % keys;
        let len = 1000 + (v % 13) as usize * 100;
        store.insert_durable(format!("k{k}"), Array1::<f64>::from_elem(len, v as f64))?;
        v += 1;
    }
    store.close()?;
    println!("{v}");
    Ok(())
}
