//! HTTP `Range` (blob reads) and `Content-Range` (upload chunks) headers.

/// A byte range to serve: `start..start+len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub len: u64,
}

/// Result of matching a `Range` header against a blob of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable single range: serve everything with 200.
    Whole,
    Partial(ByteRange),
    Unsatisfiable,
}

/// Parses `bytes=a-b`, `bytes=a-` and `bytes=-n`. Multiple ranges and other
/// units are answered with the whole blob, which RFC 9110 allows.
pub fn parse_range(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((a, b)) = spec.split_once('-') else { return RangeRequest::Whole };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.is_empty(), b.is_empty()) {
        (true, false) => b.parse::<u64>().ok().map(|n| {
            let n = n.min(size);
            (size - n, size.saturating_sub(1), n == 0)
        }),
        (false, _) => a.parse::<u64>().ok().and_then(|start| {
            let end = if b.is_empty() { Some(size.saturating_sub(1)) } else { b.parse::<u64>().ok() }?;
            Some((start, end.min(size.saturating_sub(1)), false))
        }),
        (true, true) => None,
    };
    match parsed {
        None => RangeRequest::Whole,
        Some((_, _, true)) => RangeRequest::Unsatisfiable,
        Some((start, end, _)) if start >= size || end < start => RangeRequest::Unsatisfiable,
        Some((start, end, _)) => RangeRequest::Partial(ByteRange { start, len: end - start + 1 }),
    }
}

/// Parses an upload chunk's `Content-Range: <start>-<end>` (with or without
/// a `bytes ` prefix). Returns the start offset and the declared length.
pub fn parse_content_range(header: &str) -> Option<(u64, u64)> {
    let h = header.trim();
    let h = h.strip_prefix("bytes ").unwrap_or(h);
    let h = h.split('/').next()?;
    let (a, b) = h.split_once('-')?;
    let (start, end): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (end >= start).then(|| (start, end - start + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeRequest::*;
        assert_eq!(parse_range(None, 10), Whole);
        assert_eq!(parse_range(Some("bytes=0-4"), 10), Partial(ByteRange { start: 0, len: 5 }));
        assert_eq!(parse_range(Some("bytes=5-"), 10), Partial(ByteRange { start: 5, len: 5 }));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Partial(ByteRange { start: 7, len: 3 }));
        assert_eq!(parse_range(Some("bytes=8-100"), 10), Partial(ByteRange { start: 8, len: 2 }));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=5-2"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), Whole);
        assert_eq!(parse_range(Some("items=0-1"), 10), Whole);
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("0-99"), Some((0, 100)));
        assert_eq!(parse_content_range("bytes 100-199/*"), Some((100, 100)));
        assert_eq!(parse_content_range("5-4"), None);
        assert_eq!(parse_content_range("x"), None);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// A served range always lies inside the blob and is not empty.
        #[test]
        fn ranges_stay_inside_the_blob(
            h in "bytes=[0-9]{0,21}-[0-9]{0,21}|bytes=-?[0-9 ,-]{0,12}|\\PC{0,30}",
            size in prop_oneof![0u64..100, any::<u64>()],
        ) {
            if let RangeRequest::Partial(r) = parse_range(Some(&h), size) {
                prop_assert!(r.len > 0);
                prop_assert!(r.start < size);
                prop_assert!(r.start.checked_add(r.len).is_some_and(|end| end <= size));
            }
        }

        #[test]
        fn content_ranges_are_consistent(h in "(bytes )?[0-9]{0,21}-[0-9]{0,21}(/\\*|/[0-9]{1,5})?|\\PC{0,30}") {
            if let Some((start, len)) = parse_content_range(&h) {
                prop_assert!(len >= 1);
                prop_assert!(start.checked_add(len - 1).is_some());
            }
        }
    }
}
