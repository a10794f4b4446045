//! Read-only inspection of a remote store (what `ndoffload` uses).

use super::*;

/// Lists the entries of the remote store at `url` (one LIST, then one GET
/// per entry). Objects the store ignores (see [`inspect_remote`]) and
/// entries whose metadata object cannot be parsed are left out, as the
/// store leaves them out.
///
/// # Errors
///
/// [`Error::Remote`].
pub fn list_entries(url: &str) -> Result<Vec<RemoteEntry>> {
    let rt = runtime()?;
    let loc = url::open(url, &NetOptions::default(), &[], false)?;
    rt.block_on(async {
        let mut out = Vec::new();
        for l in protocol::list_meta(&loc).await? {
            if l.size == 0 {
                continue;
            }
            match protocol::read_meta(&loc, l.name.as_str()).await {
                Ok(Some(Head::Live(m, _))) => out.push(RemoteEntry {
                    name: l.name.as_str().to_string(),
                    shape: m.shape.clone(),
                    dtype: m.dtype.clone(),
                    size: m.ndoffload_remote.size,
                    data: m.ndoffload_remote.data.clone(),
                }),
                Ok(_) => {}
                Err(e @ Error::Remote { .. }) => return Err(e),
                Err(e) => {
                    tracing::debug!(key = %l.name.as_str(), error = %e, "malformed metadata object left out");
                }
            }
        }
        Ok(out)
    })
}

/// Checks every entry of the remote store at `url`: its metadata, that its
/// data object exists with the recorded size and CRC-32 (every byte is
/// read), and that the `.npy` header agrees with the metadata. Returns one
/// result per entry.
///
/// # Errors
///
/// [`Error::Remote`] if the store cannot be listed.
pub fn verify(url: &str) -> Result<Vec<(String, Result<()>)>> {
    let rt = runtime()?;
    let loc = url::open(url, &NetOptions::default(), &[], false)?;
    let opts = TransferOptions::default();
    rt.block_on(async {
        let mut out = Vec::new();
        for l in protocol::list_meta(&loc).await? {
            if l.size == 0 {
                continue;
            }
            let name = l.name.as_str().to_string();
            let r = async {
                let Some(Head::Live(m, _)) = protocol::read_meta(&loc, &name).await? else {
                    return Ok(());
                };
                let r = &m.ndoffload_remote;
                let src = protocol::rel_path(&loc, &r.data);
                let url = loc.url_of(&src);
                let head = protocol::client(&loc);
                let meta = object_store::ObjectStoreExt::head(head, &src)
                    .await
                    .map_err(|e| protocol::remote_err(&loc, "verify", &name, url.clone(), e))?;
                let at = PathBuf::from(&url);
                if meta.size != r.size {
                    return Err(Error::Truncated {
                        path: at,
                        expected: r.size,
                        actual: meta.size,
                    });
                }
                let (crc, first) =
                    transfer::checksum_object(loc.store.clone(), &src, r.size, 65_536 + 12, opts)
                        .await
                        .map_err(|e| protocol::remote_err(&loc, "verify", &name, url.clone(), e))?;
                if crc != r.crc32 {
                    return Err(Error::corrupt(
                        &at,
                        format!("CRC-32 {crc:08x}, metadata says {:08x}", r.crc32),
                    ));
                }
                let info = NpyInfo::parse(&first, &at)?;
                info.check_len(r.size, &at)?;
                if info.shape != m.shape {
                    return Err(Error::Mismatch {
                        path: at,
                        field: "shape",
                        found: format!("{:?}", info.shape),
                        expected: format!("{:?}", m.shape),
                        other: PathBuf::from(loc.url_of(&protocol::meta_path(&loc, &name))),
                    });
                }
                Ok(())
            }
            .await;
            out.push((name, r));
        }
        Ok(out)
    })
}

/// Inspects every entry of the remote store at `url` (endpoint and
/// credentials from the `AWS_*` variables), as
/// [`inspect_store`](crate::inspect::inspect_store) does a store directory:
/// one [`EntryReport`](crate::inspect::EntryReport) per entry, with the same
/// fields (dtype, shape, data bytes, memory order, attributes, status,
/// the bytes of its objects, and with
/// [`read_data`](crate::inspect::InspectOptions#structfield.read_data) the
/// SHA-256 of its values in C order, after the data object's size and
/// CRC-32 are checked). What `ndoffload ls` and `verify` print for an
/// `s3://` URL.
///
/// Objects under the prefix's `meta/` and `data/` that the store ignores
/// are reported too, with
/// [`ignored`](crate::inspect::EntryReport#structfield.ignored) set and
/// the reason in its problem: a metadata object whose name is not a valid
/// entry name (reported by that name), and, by their keys relative to the
/// prefix, objects that are not of the store's naming form (`meta/x.txt`,
/// `data/x.bin`, `data/sub/y.npy`) or whose keys have a `.`, `..` or
/// empty segment or a control character. An entry whose metadata object
/// cannot be parsed is reported with its problem. None of them keeps the
/// other entries from being inspected.
///
/// # Errors
///
/// [`Error::NotAStore`] when there is no object under the prefix's
/// `meta/` and `data/` (a mistyped prefix: the message names what is
/// there instead), [`Error::Remote`] when the store cannot be listed or
/// an entry cannot be read for a reason that is not the entry's (network,
/// credentials). A problem of one entry is in its report.
pub fn inspect_remote(
    url: &str,
    opts: crate::inspect::InspectOptions,
) -> Result<Vec<crate::inspect::EntryReport>> {
    inspect_remote_with(url, opts, &RemoteOptions::default())
}

/// As [`inspect_remote`], with `options` (its network settings, transfer
/// parallelism and `object_store` configuration).
///
/// # Errors
///
/// As [`inspect_remote`].
pub fn inspect_remote_with(
    url: &str,
    opts: crate::inspect::InspectOptions,
    options: &RemoteOptions,
) -> Result<Vec<crate::inspect::EntryReport>> {
    use crate::inspect::EntryReport;
    let rt = runtime()?;
    let loc = url::open(url, &options.net, &options.config, false)?;
    let transfer = options.transfer;
    rt.block_on(async {
        let (listed, meta_strays) = protocol::list_meta_all(&loc).await?;
        let (data, data_strays) = protocol::list_owned(&loc, protocol::DATA_DIR).await?;
        if listed.is_empty() && meta_strays.is_empty() && data.is_empty() && data_strays.is_empty()
        {
            return Err(not_a_store(&loc).await);
        }
        let mut out = Vec::new();
        for l in listed.iter().filter(|l| l.size > 0) {
            out.push(inspect_entry(&loc, l, opts, transfer).await?);
        }
        for stray in meta_strays.into_iter().chain(data_strays) {
            let mut r = EntryReport::problem(
                stray.name,
                format!("ignored by the store: {}", stray.reason),
            );
            r.ignored = true;
            out.push(r);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    })
}

/// [`Error::NotAStore`] for `loc`, naming what the level above the prefix
/// holds (the likely intended prefix, after a typo).
async fn not_a_store(loc: &url::Location) -> Error {
    let parts: Vec<_> = loc.prefix.parts().collect();
    let parent: object_store::path::Path = parts[..parts.len().saturating_sub(1)]
        .iter()
        .cloned()
        .collect();
    let scheme_root = loc
        .url
        .strip_suffix(loc.prefix.as_ref())
        .unwrap_or(&loc.url)
        .trim_end_matches('/')
        .to_string();
    let parent_url = if parent.as_ref().is_empty() {
        format!("{scheme_root}/")
    } else {
        format!("{scheme_root}/{}/", parent.as_ref())
    };
    let listed = loc
        .store
        .list_with_delimiter((!parent.as_ref().is_empty()).then_some(&parent))
        .await;
    let there = match listed {
        Ok(l) => {
            let mut names: Vec<String> = l
                .common_prefixes
                .iter()
                .filter_map(|p| p.filename().map(|f| format!("{f}/")))
                .collect();
            let n = names.len();
            names.truncate(10);
            match n {
                0 if l.objects.is_empty() => format!("{parent_url} is empty"),
                0 => format!("{parent_url} holds no prefix"),
                _ => format!(
                    "{parent_url} holds {}{}",
                    names.join(", "),
                    if n > 10 { ", ..." } else { "" }
                ),
            }
        }
        Err(_) => String::new(),
    };
    Error::NotAStore {
        location: loc.url.clone(),
        reason: format!(
            "no object under {0}/meta/ or {0}/data/{1}",
            loc.url,
            if there.is_empty() {
                String::new()
            } else {
                format!("; {there}")
            }
        ),
    }
}

/// The report of one listed entry: its metadata, the header of its data
/// object (one ranged GET), and with `read_data` the whole object.
async fn inspect_entry(
    loc: &url::Location,
    l: &protocol::Listed,
    opts: crate::inspect::InspectOptions,
    transfer: TransferOptions,
) -> Result<crate::inspect::EntryReport> {
    use crate::inspect::EntryReport;
    let name = l.name.as_str().to_string();
    let mut r = EntryReport::named(name.clone());
    let m = match protocol::read_meta(loc, &name).await {
        Ok(Some(Head::Live(m, _))) => m,
        Ok(_) => {
            r.problem = Some("removed while listed".into());
            return Ok(r);
        }
        Err(e @ Error::Remote { .. }) if !e.is_not_found() => return Err(e),
        Err(e) => {
            r.problem = Some(e.to_string());
            return Ok(r);
        }
    };
    r.dtype = Some(m.dtype.clone());
    r.shape = Some(m.shape.clone());
    r.attrs = m.ndoffload_attrs.clone().unwrap_or_default();
    r.stored_bytes = Some(l.size + m.ndoffload_remote.size);
    match check_data(loc, &name, &m, opts, transfer, &mut r).await {
        Ok(()) => {}
        Err(e @ Error::Remote { .. }) if !e.is_not_found() => return Err(e),
        Err(e) => r.problem = Some(e.to_string()),
    }
    Ok(r)
}

async fn check_data(
    loc: &url::Location,
    name: &str,
    m: &RemoteMeta,
    opts: crate::inspect::InspectOptions,
    transfer: TransferOptions,
    r: &mut crate::inspect::EntryReport,
) -> Result<()> {
    use object_store::{GetOptions, ObjectStore};
    let rf = &m.ndoffload_remote;
    let src = protocol::rel_path(loc, &rf.data);
    let url = loc.url_of(&src);
    let at = PathBuf::from(&url);
    let fail = |e| protocol::remote_err(loc, "read", name, url.clone(), e);
    // The header: one ranged GET (a second one for a header longer than
    // the first guess), which also tells the object's size.
    let mut want = 4096u64;
    let (info, size) = loop {
        let got = loc
            .store
            .get_opts(&src, GetOptions::new().with_range(Some(0..want)))
            .await
            .map_err(fail)?;
        let size = got.meta.size;
        let bytes = got.bytes().await.map_err(fail)?;
        match NpyInfo::parse(&bytes, &at) {
            Ok(info) => break (info, size),
            Err(Error::Truncated { expected, .. }) if expected > want && want < size => {
                want = expected.min(65_536 + 12);
            }
            Err(e) => return Err(e),
        }
    };
    r.fortran_order = info.fortran;
    r.nbytes = info.data_len;
    if size != rf.size {
        return Err(Error::Truncated {
            path: at,
            expected: rf.size,
            actual: size,
        });
    }
    let meta_url = || PathBuf::from(loc.url_of(&protocol::meta_path(loc, name)));
    if info.descr != m.dtype {
        return Err(Error::Mismatch {
            path: meta_url(),
            field: "dtype",
            found: m.dtype.clone(),
            expected: info.descr.clone(),
            other: at,
        });
    }
    if info.shape != m.shape {
        return Err(Error::Mismatch {
            path: meta_url(),
            field: "shape",
            found: format!("{:?}", m.shape),
            expected: format!("{:?}", info.shape),
            other: at,
        });
    }
    let Some(itemsize) = crate::element::dtype_itemsize(&info.descr) else {
        return Err(Error::corrupt(
            &at,
            format!("unsupported dtype {}", info.descr),
        ));
    };
    info.check_len(size, &at)?;
    if !opts.read_data {
        return Ok(());
    }
    // The whole object, into a temporary file: its CRC-32 checked, then
    // the SHA-256 of its values in C order, as for a local entry.
    let tmp =
        tempfile::NamedTempFile::new().map_err(|e| Error::io("create", std::env::temp_dir(), e))?;
    let file = Arc::new(
        tmp.as_file()
            .try_clone()
            .map_err(|e| Error::io("open", tmp.path(), e))?,
    );
    let progress = transfer::Progress::start(name, "download", size);
    let crc = transfer::download_to_file(
        loc.store.clone(),
        &src,
        size,
        file,
        tmp.path(),
        None,
        transfer,
        &progress,
    )
    .await
    .map_err(|e| match e {
        UploadError::Remote(e) => protocol::remote_err(loc, "read", name, url.clone(), e),
        UploadError::Local(e) => e,
    })?
    .crc;
    if crc != rf.crc32 {
        return Err(Error::corrupt(
            &at,
            format!("CRC-32 {crc:08x}, metadata says {:08x}", rf.crc32),
        ));
    }
    let file = crate::io::open_regular(tmp.path(), crate::io::Access::Read)?;
    let sha = crate::inspect::data_sha256(&file, tmp.path(), &info, itemsize)
        .map_err(|e| relabel(e, tmp.path(), &at))?;
    r.sha256 = Some(sha);
    Ok(())
}

/// `e` with the temporary file's path replaced by the object's URL.
fn relabel(e: Error, tmp: &FsPath, at: &FsPath) -> Error {
    match e {
        Error::Corrupt { path, reason } if path == tmp => Error::Corrupt {
            path: at.to_path_buf(),
            reason,
        },
        Error::Truncated {
            path,
            expected,
            actual,
        } if path == tmp => Error::Truncated {
            path: at.to_path_buf(),
            expected,
            actual,
        },
        e => e,
    }
}
