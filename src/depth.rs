//! A bound on the nesting of JSON read from files (`.meta.json`, pack
//! metadata, pack set manifests), checked with a linear scan before the
//! text reaches `serde_json`, which recurses once per level.
//!
//! `serde_json` stops at 128 levels, but that takes about 200 KiB of stack in
//! a debug build: a thread with a small stack reading a file nested a few
//! dozen levels deep would overflow (an abort, not an error).

/// Deepest nesting of arrays and objects accepted in a JSON file read by the
/// crate (`.meta.json`, pack metadata, pack set manifests). The crate's own
/// files nest 2 levels. At this depth `serde_json` needs about 30 KiB of
/// stack in a debug build, so a reader on a 64 KiB thread does not overflow.
pub(crate) const MAX_JSON_DEPTH: usize = 16;

/// Checks that the JSON `text` nests arrays and objects at most `limit`
/// levels deep (brackets inside strings do not count).
pub(crate) fn check_json(text: &[u8], limit: usize) -> Result<(), String> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut i = 0;
    while let Some(&c) = text.get(i) {
        if in_string {
            match c {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match c {
                b'[' | b'{' => {
                    depth += 1;
                    if depth > limit {
                        return Err(too_deep(limit, i));
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                b'"' => in_string = true,
                _ => {}
            }
        }
        i += 1;
    }
    Ok(())
}

fn too_deep(limit: usize, at: usize) -> String {
    format!("nested more than {limit} levels deep (at byte {at})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_depth() {
        let ok = |t: &str| check_json(t.as_bytes(), 2).is_ok();
        assert!(ok(r#"{"a": [1, 2], "b": {"c": "[[[[{{{"}}"#));
        assert!(ok(r#"{"a": "\"[[[[", "b": "\\", "c": [1]}"#));
        assert!(!ok(r#"{"a": [[1]]}"#));
        assert!(!ok(r#"{"a": "\\"[[[[]]]]}"#));
        assert!(ok(&format!("{}{}", "[]".repeat(10_000), "{}")));
    }
}
