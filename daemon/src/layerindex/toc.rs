//! Reads the table of contents of a layer tar into the index's entries
//! ([`Entry`], declared in `berth_wire`): what unpacking each would produce
//! and where its data sits in the uncompressed stream.

use base64::Engine;
pub use berth_wire::layer_index::{Entry, Kind};
use std::collections::BTreeMap;
use std::io::{self, Read};

/// Cleans a tar path: `./a/b/` → `a/b`; refuses `..` (a layer that
/// writes outside its root is refused, not indexed).
pub fn clean_path(raw: &str) -> io::Result<String> {
    let mut parts = Vec::new();
    for p in raw.split('/') {
        match p {
            "" | "." => {}
            ".." => return Err(bad(format!("tar entry {raw:?} climbs out of the layer root"))),
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Lists the tar read from `r` (uncompressed). Reads the whole stream up
/// to the end-of-archive marker.
pub fn read_toc(r: impl Read) -> io::Result<Vec<Entry>> {
    let mut archive = tar::Archive::new(r);
    let mut out = Vec::new();
    for e in archive.entries()? {
        let mut e = e?;
        let h = e.header();
        let kind = match h.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File,
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => Kind::Symlink,
            tar::EntryType::Link => Kind::Hardlink,
            tar::EntryType::Char => Kind::Char,
            tar::EntryType::Block => Kind::Block,
            tar::EntryType::Fifo => Kind::Fifo,
            other => {
                return Err(bad(format!(
                    "tar entry {:?} has type {other:?}, which lazy mounting does not support",
                    String::from_utf8_lossy(&e.path_bytes())
                )))
            }
        };
        let mode = h.mode()? & 0o7777;
        let (uid, gid, mtime) = (h.uid()?, h.gid()?, h.mtime()?);
        let (devmajor, devminor) = match kind {
            Kind::Char | Kind::Block => (h.device_major()?.unwrap_or(0), h.device_minor()?.unwrap_or(0)),
            _ => (0, 0),
        };
        let path = clean_path(&String::from_utf8_lossy(&e.path_bytes()))?;
        let link = match kind {
            Kind::Symlink => e.link_name_bytes().map(|l| String::from_utf8_lossy(&l).into_owned()),
            Kind::Hardlink => match e.link_name_bytes() {
                Some(l) => Some(clean_path(&String::from_utf8_lossy(&l))?),
                None => None,
            },
            _ => None,
        };
        let mut xattrs = BTreeMap::new();
        if let Some(pax) = e.pax_extensions()? {
            for ext in pax {
                let ext = ext?;
                if let Ok(key) = ext.key() {
                    if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                        xattrs.insert(
                            name.to_string(),
                            base64::engine::general_purpose::STANDARD.encode(ext.value_bytes()),
                        );
                    }
                }
            }
        }
        let (size, offset) = match kind {
            Kind::File => (e.size(), e.raw_file_position()),
            _ => (0, 0),
        };
        out.push(Entry { path, kind, mode, uid, gid, mtime, size, offset, link, devmajor, devminor, xattrs });
        // Skip the data (the reader sees every byte; the archive reads it through).
        io::copy(&mut e, &mut io::sink())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_mode(0o644);
        h
    }

    #[test]
    fn lists_every_kind_with_offsets() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, "./etc/", &[][..]).unwrap();
        let mut h = header();
        h.set_mode(0o4755);
        h.set_uid(7);
        h.set_gid(8);
        h.set_mtime(1_700_000_000);
        h.set_size(5);
        b.append_data(&mut h, "etc/hello", &b"hello"[..]).unwrap();
        let mut h = header();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "etc/link", "hello").unwrap();
        let mut h = header();
        h.set_entry_type(tar::EntryType::Link);
        h.set_size(0);
        b.append_link(&mut h, "etc/hard", "./etc/hello").unwrap();
        let mut h = header();
        h.set_entry_type(tar::EntryType::Char);
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
        h.set_size(0);
        b.append_data(&mut h, "dev/null", &[][..]).unwrap();
        let long = format!("deep/{}/file", "x".repeat(150));
        let mut h = header();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, &long, &b"abc"[..]).unwrap();
        let data = b.into_inner().unwrap();

        let toc = read_toc(&data[..]).unwrap();
        let paths: Vec<&str> = toc.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["etc", "etc/hello", "etc/link", "etc/hard", "dev/null", long.as_str()]);
        let f = &toc[1];
        assert_eq!((f.kind, f.mode, f.uid, f.gid, f.mtime, f.size), (Kind::File, 0o4755, 7, 8, 1_700_000_000, 5));
        assert_eq!(&data[f.offset as usize..f.offset as usize + 5], b"hello");
        assert_eq!(toc[2].link.as_deref(), Some("hello"));
        assert_eq!((toc[3].kind, toc[3].link.as_deref()), (Kind::Hardlink, Some("etc/hello")));
        assert_eq!((toc[4].kind, toc[4].devmajor, toc[4].devminor), (Kind::Char, 1, 3));
        assert_eq!(&data[toc[5].offset as usize..toc[5].offset as usize + 3], b"abc");
    }

    #[test]
    fn refuses_escaping_paths() {
        assert_eq!(clean_path("./a//b/").unwrap(), "a/b");
        assert!(clean_path("a/../../etc").is_err());
    }
}
