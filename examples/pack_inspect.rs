//! Lists the entries of a pack and optionally verifies every checksum.
//!
//! ```text
//! cargo run --example pack_inspect -- tiles.pack [--verify]
//! ```

use ndarray_offload::pack::PackReader;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: pack_inspect FILE [--verify]");
        std::process::exit(2);
    };
    let verify = args.any(|a| a == "--verify");
    let r = PackReader::open(&path)?;
    println!("{path}: {} entries, {} bytes", r.len(), r.file_len());
    for info in r.list() {
        println!("  {}", info?);
    }
    if verify {
        let report = r.verify()?;
        println!(
            "verified: {} entries, {} arrays, {} payload bytes",
            report.entries, report.arrays, report.payload_bytes
        );
    }
    Ok(())
}
