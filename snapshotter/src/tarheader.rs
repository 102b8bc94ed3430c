//! Just enough of the tar header format to check that an index entry
//! agrees with the header the layer really has before the entry's data.

/// Why a block is not the header an index entry says it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("short header block")]
    Short,
    #[error("the block before the data is not a tar header (bad checksum)")]
    Checksum,
    #[error("the header is of type {0:?}, not a regular file")]
    NotAFile(char),
    #[error("unreadable {0}")]
    Unreadable(&'static str),
    #[error("mode {tar:o} in the tar, {index:o} in the index")]
    Mode { tar: u32, index: u32 },
    #[error("{tar} bytes in the tar, {index} in the index")]
    Size { tar: u64, index: u64 },
}

/// An octal or base-256 (GNU) number field.
fn number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        // Base-256: big-endian, the first byte's top bit set.
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(*b))?;
        }
        return Some(v);
    }
    let text: String = field.iter().take_while(|b| **b != 0).map(|b| *b as char).collect();
    let text = text.trim();
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// Whether `block` (512 bytes) is the header of a regular file of `size`
/// bytes with permission bits `mode`; why not, otherwise.
pub fn describes(block: &[u8], size: u64, mode: u32) -> Result<(), HeaderError> {
    if block.len() != 512 {
        return Err(HeaderError::Short);
    }
    let stored: u64 = block[148..156].iter().map(|b| u64::from(*b)).sum();
    let sum: u64 =
        block.iter().enumerate().map(|(i, b)| if (148..156).contains(&i) { 32 } else { u64::from(*b) }).sum();
    if number(&block[148..156]) != Some(sum) && stored != 0 {
        return Err(HeaderError::Checksum);
    }
    if !matches!(block[156], b'0' | 0 | b'7') {
        return Err(HeaderError::NotAFile(block[156] as char));
    }
    let header_mode = number(&block[100..108]).ok_or(HeaderError::Unreadable("mode"))? as u32 & 0o7777;
    if header_mode != mode & 0o7777 {
        return Err(HeaderError::Mode { tar: header_mode, index: mode & 0o7777 });
    }
    // Sizes past the ustar field's range live in a PAX header; below it the
    // field is exact.
    let header_size = number(&block[124..136]).ok_or(HeaderError::Unreadable("size"))?;
    if header_size < 0o77777777777 && header_size != size {
        return Err(HeaderError::Size { tar: header_size, index: size });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(size: u64, mode: u32) -> Vec<u8> {
        let mut h = tar::Header::new_ustar();
        h.set_size(size);
        h.set_mode(mode);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_path("etc/passwd").unwrap();
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    #[test]
    fn headers_are_compared_with_index_entries() {
        assert!(describes(&header(1234, 0o644), 1234, 0o644).is_ok());
        let e = describes(&header(1234, 0o644), 1234, 0o4755).unwrap_err();
        assert_eq!(e.to_string(), "mode 644 in the tar, 4755 in the index", "set-id bits the tar lacks");
        let e = describes(&header(1234, 0o644), 99, 0o644).unwrap_err();
        assert_eq!(e.to_string(), "1234 bytes in the tar, 99 in the index", "another size");
        let e = describes(&vec![7u8; 512], 1234, 0o644).unwrap_err();
        assert_eq!(e, HeaderError::Checksum, "not a header");
        let mut dev = tar::Header::new_ustar();
        dev.set_entry_type(tar::EntryType::Block);
        dev.set_mode(0o644);
        dev.set_cksum();
        let e = describes(dev.as_bytes(), 0, 0o644).unwrap_err();
        assert_eq!(e.to_string(), "the header is of type '4', not a regular file", "a device, not a file");
    }
}
