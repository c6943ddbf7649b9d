//! Resource IDs: `name[?query]`, where the name is a dot-separated list of non-empty parts.

/// The tag a client may put in a resource ID to stand for its own connection ID. The gateway
/// replaces it before anything reaches NATS; clients keep seeing the tagged ID.
pub const CID_TAG: &str = "{cid}";

/// Whether `rid` is a valid resource ID, with an optional query.
///
/// Name characters are printable ASCII (33..=126) except the NATS wildcards `*` and `>`; parts are
/// non-empty. A `?` ends the name and everything after it is the opaque query, as in Resgate.
pub fn is_valid_rid(rid: &str) -> bool {
    valid_rid(rid, true)
}

/// Whether `rid` is a valid resource ID without a query.
pub fn is_valid_rid_no_query(rid: &str) -> bool {
    valid_rid(rid, false)
}

fn valid_rid(rid: &str, allow_query: bool) -> bool {
    let mut at_part_start = true;
    for &b in rid.as_bytes() {
        match b {
            b'?' => return allow_query && !at_part_start,
            b'.' => {
                if at_part_start {
                    return false;
                }
                at_part_start = true;
            }
            33..=126 if b != b'*' && b != b'>' => at_part_start = false,
            _ => return false,
        }
    }
    !at_part_start
}

/// Whether `part` is a valid single part (a method or event name): printable ASCII, none of
/// `.`, `*`, `>`, `?`, and non-empty.
pub fn is_valid_rid_part(part: &str) -> bool {
    !part.is_empty() && part.bytes().all(|b| (33..=126).contains(&b) && !matches!(b, b'.' | b'*' | b'>' | b'?'))
}

/// Splits a resource ID into its name and its query. An empty query (`name?`) counts as none,
/// as in Resgate.
pub fn split_query(rid: &str) -> (&str, Option<&str>) {
    match rid.find('?') {
        Some(i) if i + 1 < rid.len() => (&rid[..i], Some(&rid[i + 1..])),
        Some(i) => (&rid[..i], None),
        None => (rid, None),
    }
}

/// Replaces every `{cid}` tag in `rid` with the connection ID. Borrows when there is none.
pub fn replace_cid<'a>(rid: &'a str, cid: &str) -> std::borrow::Cow<'a, str> {
    if rid.contains(CID_TAG) {
        std::borrow::Cow::Owned(rid.replace(CID_TAG, cid))
    } else {
        std::borrow::Cow::Borrowed(rid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_rids() {
        for rid in ["test", "test.model", "test.model._hej_", "a?q=1", "a.b?x=a.b c", "a?", "{cid}.x"] {
            assert!(is_valid_rid(rid), "{rid} should be valid");
        }
    }

    #[test]
    fn invalid_rids() {
        for rid in ["", ".", "a.", ".a", "a..b", "a.*", "a.>", "a b", "täst", "a.?x", "?x", "a\u{7f}", "a\tb"] {
            assert!(!is_valid_rid(rid), "{rid:?} should be invalid");
        }
        assert!(!is_valid_rid_no_query("a?q"));
    }

    #[test]
    fn parts() {
        assert!(is_valid_rid_part("set"));
        for p in ["", "a.b", "*", ">", "a?", "a b"] {
            assert!(!is_valid_rid_part(p), "{p:?}");
        }
    }

    #[test]
    fn query_split() {
        assert_eq!(split_query("a.b?x=1&y=2"), ("a.b", Some("x=1&y=2")));
        assert_eq!(split_query("a.b?"), ("a.b", None));
        assert_eq!(split_query("a.b"), ("a.b", None));
    }

    #[test]
    fn cid_tag() {
        assert_eq!(replace_cid("user.{cid}.info", "abc"), "user.abc.info");
        assert!(matches!(replace_cid("user.x", "abc"), std::borrow::Cow::Borrowed(_)));
    }
}
