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
//! finishing its upload (`RemoteStore` checks this), so an upload is never
//! deleted under a commit. A grace period of zero deletes at once: use it
//! only while no writer or reader is running.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use object_store::path::Path;
use object_store::{PutMode, PutOptions};

use super::protocol::{self, Head, DATA_DIR, GC_DIR};
use super::url::Location;
use crate::error::Result;

/// What a garbage-collection pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
}

fn rel_of(loc: &Location, path: &Path) -> Option<String> {
    let parts: Vec<String> = path
        .prefix_match(&loc.prefix)?
        .map(|p| p.as_ref().to_string())
        .collect();
    Some(parts.join("/"))
}

/// Runs one pass (see the module docs).
pub(crate) async fn run(loc: &Location, grace: Duration) -> Result<GcReport> {
    // 1. Every data object a committed entry references.
    let listed = protocol::list_meta(loc).await?;
    let heads: Vec<Result<Option<Head>>> =
        futures::stream::iter(listed.iter().filter(|l| l.size > 0))
            .map(|l| protocol::read_meta(loc, l.name.as_str()))
            .buffer_unordered(16)
            .collect()
            .await;
    let mut referenced = BTreeSet::new();
    for h in heads {
        if let Some(Head::Live(meta, _)) = h? {
            referenced.insert(meta.ndoffload_remote.data.clone());
        }
    }
    // 2. Data objects, after the metadata: an object committed in between
    // looks unreferenced, and is only marked (unless the grace is zero).
    let data = protocol::list_dir(loc, DATA_DIR).await?;
    let marks = protocol::list_dir(loc, GC_DIR).await?;
    let now = protocol::now_ms() as i64;
    let mark_age: std::collections::BTreeMap<String, i64> = marks
        .iter()
        .filter_map(|(p, _, t)| Some((p.filename()?.to_string(), now - t)))
        .collect();
    let mut report = GcReport::default();
    let mut alive = BTreeSet::new();
    for (path, size, _) in &data {
        let (Some(rel), Some(file)) = (rel_of(loc, path), path.filename()) else {
            continue;
        };
        alive.insert(file.to_string());
        if referenced.contains(&rel) {
            report.referenced += 1;
            if mark_age.contains_key(file) {
                protocol::delete(loc, &loc.prefix.clone().join(GC_DIR).join(file), file).await?;
            }
            continue;
        }
        let old_enough = match mark_age.get(file) {
            _ if grace.is_zero() => true,
            Some(age) => *age >= grace.as_millis() as i64,
            None => false,
        };
        if old_enough {
            protocol::delete(loc, path, file).await?;
            protocol::delete(loc, &loc.prefix.clone().join(GC_DIR).join(file), file).await?;
            report.deleted += 1;
            report.deleted_bytes += size;
        } else {
            if !mark_age.contains_key(file) {
                let mark = loc.prefix.clone().join(GC_DIR).join(file);
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
                            file,
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
    for (path, _, _) in &marks {
        if let Some(file) = path.filename() {
            if !alive.contains(file) {
                protocol::delete(loc, path, file).await?;
            }
        }
    }
    Ok(report)
}
