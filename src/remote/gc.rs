//! Garbage collection of unreferenced data objects.
//!
//! A data object no metadata object references is either an old value
//! (replaced or removed), an upload whose commit lost or never happened (a
//! crash), or an upload about to be committed. A pass marks each such
//! object with `gc/<name>` the first time it sees it, and deletes it in a
//! later pass once the mark is older than the grace period and the object
//! is still unreferenced. A reader that read a metadata object before the
//! object lost its last reference therefore has the whole grace period to
//! download it; a writer commits only within half the grace period of
//! finishing its upload (the store's backend checks this), so an upload is never
//! deleted under a commit. A grace period of zero deletes at once: use it
//! only while no writer or reader is running.

//!
//! Only objects of the store's own naming form are ever deleted:
//! `data/K.<unique>.npy` (one path segment, `K` a valid entry name,
//! `<unique>` lowercase hexadecimal; see `protocol::parse_data_part`) and
//! their marks `gc/K.<unique>.npy`. Anything else under `data/` or `gc/`
//! (`data/x.npy`, `data/x.bin`, `data/sub/y.npy`, keys `object_store`
//! cannot name) is counted in [`GcReport::foreign`] and left alone. A
//! metadata object that cannot be parsed does not stop the pass: the data
//! objects of its entry are all kept (it may name one of them), and it is
//! counted in [`GcReport::malformed`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use object_store::{PutMode, PutOptions};

use super::protocol::{self, Head, DATA_DIR, GC_DIR};
use super::url::Location;
use crate::error::{Error, Result};

/// What a garbage-collection pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GcReport {
    /// Data objects referenced by a committed entry (kept).
    pub referenced: usize,
    /// Unreferenced data objects deleted by this pass.
    pub deleted: usize,
    /// Unreferenced data objects marked by this pass, or still within their
    /// grace period.
    pub waiting: usize,
    /// Bytes of the deleted data objects.
    pub deleted_bytes: u64,
    /// Objects under `data/` and `gc/` that are not of the store's naming
    /// form (`data/K.<unique>.npy`): never deleted.
    pub foreign: usize,
    /// Metadata objects that could not be parsed (not JSON, not the
    /// store's format, a newer version): every data object of their
    /// entries is kept.
    pub malformed: usize,
}

/// Runs one pass (see the module docs).
pub(crate) async fn run(loc: &Location, grace: Duration) -> Result<GcReport> {
    let mut report = GcReport::default();
    // 1. Every data object a committed entry references.
    let (listed, _) = protocol::list_meta_all(loc).await?;
    let heads: Vec<(String, Result<Option<Head>>)> =
        futures::stream::iter(listed.iter().filter(|l| l.size > 0))
            .map(|l| async move {
                let name = l.name.as_str().to_string();
                let head = protocol::read_meta(loc, &name).await;
                (name, head)
            })
            .buffer_unordered(16)
            .collect()
            .await;
    let mut referenced = BTreeSet::new();
    let mut malformed = BTreeSet::new();
    for (name, head) in heads {
        match head {
            Ok(Some(Head::Live(meta, _))) => {
                referenced.insert(meta.ndoffload_remote.data.clone());
            }
            Ok(_) => {}
            // Not known who references what: nothing is deleted.
            Err(e @ Error::Remote { .. }) => return Err(e),
            Err(e) => {
                tracing::warn!(key = %name, error = %e, "malformed metadata object: its entry's data objects are kept");
                malformed.insert(name);
            }
        }
    }
    report.malformed = malformed.len();
    // 2. Data objects, after the metadata: an object committed in between
    // looks unreferenced, and is only marked (unless the grace is zero).
    let (data, foreign_data) = protocol::list_owned(loc, DATA_DIR).await?;
    let (marks, foreign_marks) = protocol::list_owned(loc, GC_DIR).await?;
    report.foreign = foreign_data.len() + foreign_marks.len();
    let now = protocol::now_ms() as i64;
    let mark_age: BTreeMap<&str, i64> = marks
        .iter()
        .map(|m| (m.part.as_str(), now - m.modified_ms))
        .collect();
    let mark_of = |part: &str| loc.prefix.clone().join(GC_DIR).join(part);
    let mut alive = BTreeSet::new();
    for obj in &data {
        let part = obj.part.as_str();
        alive.insert(part);
        let rel = format!("{DATA_DIR}/{part}");
        if referenced.contains(&rel) || malformed.contains(obj.name.as_str()) {
            report.referenced += usize::from(referenced.contains(&rel));
            if mark_age.contains_key(part) {
                protocol::delete(loc, &mark_of(part), part).await?;
            }
            continue;
        }
        let old_enough = match mark_age.get(part) {
            _ if grace.is_zero() => true,
            Some(age) => *age >= grace.as_millis() as i64,
            None => false,
        };
        if old_enough {
            protocol::delete(loc, &obj.path, part).await?;
            protocol::delete(loc, &mark_of(part), part).await?;
            report.deleted += 1;
            report.deleted_bytes += obj.size;
        } else {
            if !mark_age.contains_key(part) {
                let mark = mark_of(part);
                let opts = PutOptions {
                    mode: PutMode::Create,
                    ..Default::default()
                };
                match loc.store.put_opts(&mark, Vec::new().into(), opts).await {
                    Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => {}
                    Err(object_store::Error::Precondition { .. }) => {}
                    Err(e) => {
                        return Err(protocol::remote_err(
                            loc,
                            "mark",
                            part,
                            loc.url_of(&mark),
                            e,
                        ))
                    }
                }
            }
            report.waiting += 1;
        }
    }
    // 3. Marks of objects that are gone.
    for m in &marks {
        if !alive.contains(m.part.as_str()) {
            protocol::delete(loc, &m.path, &m.part).await?;
        }
    }
    // 4. Objects of capability probes that were interrupted.
    protocol::sweep_probes(loc, grace.max(protocol::PROBE_LEFTOVER_AGE)).await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::protocol::{RemoteField, RemoteMeta};
    use object_store::path::Path;
    use object_store::ObjectStoreExt;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn keys(loc: &Location) -> Vec<String> {
        use futures::TryStreamExt;
        let mut keys: Vec<String> = block_on(loc.store.list(None).try_collect::<Vec<_>>())
            .unwrap()
            .into_iter()
            .map(|m| m.location.to_string())
            .collect();
        keys.sort();
        keys
    }

    #[test]
    fn gc_deletes_only_unreferenced_objects_of_its_own_form() {
        let loc = super::super::url::open(
            "memory:///bucket/p",
            &super::super::url::NetOptions::default(),
            &[],
            false,
        )
        .unwrap();
        let put = |key: &str, body: &[u8]| {
            let path = Path::parse(format!("bucket/p/{key}")).unwrap();
            block_on(loc.store.put(&path, body.to_vec().into())).unwrap();
        };
        let meta = RemoteMeta::new(
            vec![1],
            "|u1".into(),
            RemoteField {
                version: 1,
                name: "a".into(),
                data: "data/a.0a.npy".into(),
                size: 3,
                crc32: 0,
                writer: "w".into(),
                committed_ms: 0,
            },
        );
        put("meta/a.meta.json", &meta.to_bytes());
        put("data/a.0a.npy", b"abc");
        put("data/a.0b.npy", b"old value");
        // A malformed metadata object: its entry's data objects are kept.
        put("meta/m.meta.json", b"{not json");
        put("data/m.0c.npy", b"m");
        // Foreign objects under data/ and gc/.
        let foreign = [
            "data/x.npy",
            "data/x.bin",
            "data/sub/y.npy",
            "data/a.ZZ.npy",
            "data/CON.0d.npy",
            "gc/notes.txt",
        ];
        for f in foreign {
            put(f, b"foreign");
        }
        // A probe object of a probe at work.
        put(".ndoffload/probe-0123456789abcdef0123", b"1");
        let before = keys(&loc);

        let first = block_on(run(&loc, Duration::from_secs(3600))).unwrap();
        assert_eq!(first.referenced, 1);
        assert_eq!(first.waiting, 1, "{first:?}");
        assert_eq!(first.deleted, 0);
        assert_eq!(first.foreign, foreign.len());
        assert_eq!(first.malformed, 1);
        let mut marked = before.clone();
        marked.push("bucket/p/gc/a.0b.npy".into());
        marked.sort();
        assert_eq!(keys(&loc), marked);

        let second = block_on(run(&loc, Duration::ZERO)).unwrap();
        assert_eq!(second.deleted, 1, "{second:?}");
        assert_eq!(second.deleted_bytes, 9);
        assert_eq!(second.foreign, foreign.len());
        let mut after = before.clone();
        after.retain(|k| k != "bucket/p/data/a.0b.npy");
        assert_eq!(keys(&loc), after);
    }
}
