//! Read-only inspection of a remote store (what `ndoffload` uses).

use super::*;

/// Lists the entries of the remote store at `url` (one LIST, then one GET
/// per entry).
///
/// # Errors
///
/// [`Error::Remote`], [`Error::Corrupt`] and friends for a malformed
/// metadata object.
pub fn list_entries(url: &str) -> Result<Vec<RemoteEntry>> {
    let rt = runtime()?;
    let loc = url::open(url, &NetOptions::default(), &[])?;
    rt.block_on(async {
        let mut out = Vec::new();
        for l in protocol::list_meta(&loc).await? {
            if l.size == 0 {
                continue;
            }
            if let Some(Head::Live(m, _)) = protocol::read_meta(&loc, l.name.as_str()).await? {
                out.push(RemoteEntry {
                    name: l.name.as_str().to_string(),
                    shape: m.shape.clone(),
                    dtype: m.dtype.clone(),
                    size: m.ndoffload_remote.size,
                    data: m.ndoffload_remote.data.clone(),
                });
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
    let loc = url::open(url, &NetOptions::default(), &[])?;
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
                    .map_err(|e| protocol::remote_err("verify", &name, url.clone(), e))?;
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
                        .map_err(|e| protocol::remote_err("verify", &name, url.clone(), e))?;
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
