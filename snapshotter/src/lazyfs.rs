//! The read-only FUSE file system of a lazily mounted layer: exactly what
//! unpacking the layer's tar would produce, in the form overlayfs expects
//! of a lower directory.
//!
//! - modes, owners, times, symlinks, hard links (one inode, counted links),
//!   devices and FIFOs, and xattrs from the tar's PAX records;
//! - a whiteout `.wh.NAME` becomes a character device 0/0 named `NAME`, and
//!   `.wh..wh..opq` marks its directory opaque (`trusted.overlay.opaque=y`),
//!   as containerd's overlayfs applier writes them;
//! - later tar entries replace earlier ones with the same path, and parent
//!   directories missing from the tar are made (0755, root), as tar does.
//!
//! File data comes from [`Layer`] on the tokio runtime; FUSE replies are
//! sent from there, so a slow fetch never blocks other lookups.

use crate::layer::Layer;
use base64::Engine;
use berth_wire::layer_index::{Entry, Kind};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// Everything is immutable: the kernel may cache it for as long as it likes.
const TTL: Duration = Duration::from_secs(3600);
const ROOT: u64 = 1;

struct Node {
    attr: FileAttr,
    parent: u64,
    children: BTreeMap<OsString, u64>,
    link: Vec<u8>,
    /// (offset in the tar, size) of a regular file's data.
    data: Option<(u64, u64)>,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

pub struct LazyFs {
    nodes: Vec<Node>,
    layer: Arc<Layer>,
    rt: tokio::runtime::Handle,
}

fn attr(ino: u64, kind: FileType, perm: u32, uid: u64, gid: u64, mtime: u64) -> FileAttr {
    let t = UNIX_EPOCH + Duration::from_secs(mtime);
    FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind,
        perm: (perm & 0o7777) as u16,
        nlink: 1,
        uid: uid as u32,
        gid: gid as u32,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// Linux's `makedev` for the 32-bit rdev FUSE carries.
fn makedev(major: u32, minor: u32) -> u32 {
    ((major & 0xfff) << 8) | (minor & 0xff) | ((minor & !0xff) << 12)
}

impl LazyFs {
    pub fn new(layer: Arc<Layer>, rt: tokio::runtime::Handle) -> LazyFs {
        let entries = layer.index.entries.clone();
        let root = Node {
            attr: attr(ROOT, FileType::Directory, 0o755, 0, 0, 0),
            parent: ROOT,
            children: BTreeMap::new(),
            link: Vec::new(),
            data: None,
            xattrs: Vec::new(),
        };
        let mut fs = LazyFs { nodes: vec![root], layer, rt };
        let mut by_path: HashMap<String, u64> = HashMap::from([(String::new(), ROOT)]);
        for e in &entries {
            fs.add(e, &mut by_path);
        }
        fs.count_links();
        fs
    }

    fn node(&self, ino: u64) -> Option<&Node> {
        self.nodes.get((ino as usize).checked_sub(1)?)
    }

    fn node_mut(&mut self, ino: u64) -> &mut Node {
        &mut self.nodes[ino as usize - 1]
    }

    fn push(&mut self, parent: u64, name: &str, mut a: FileAttr) -> u64 {
        let ino = self.nodes.len() as u64 + 1;
        a.ino = INodeNo(ino);
        self.nodes.push(Node {
            attr: a,
            parent,
            children: BTreeMap::new(),
            link: Vec::new(),
            data: None,
            xattrs: Vec::new(),
        });
        self.node_mut(parent).children.insert(OsString::from(name), ino);
        ino
    }

    /// The directory `path`, made (0755, root) if the tar skipped it.
    fn dir(&mut self, path: &str, by_path: &mut HashMap<String, u64>) -> u64 {
        if let Some(ino) = by_path.get(path) {
            if self.node(*ino).is_some_and(|n| n.attr.kind == FileType::Directory) {
                return *ino;
            }
        }
        let (parent, name) = match path.rsplit_once('/') {
            Some((p, n)) => (self.dir(p, by_path), n),
            None => (ROOT, path),
        };
        let ino = self.push(parent, name, attr(0, FileType::Directory, 0o755, 0, 0, 0));
        by_path.insert(path.to_string(), ino);
        ino
    }

    fn add(&mut self, e: &Entry, by_path: &mut HashMap<String, u64>) {
        if e.path.is_empty() {
            if e.kind == Kind::Dir {
                let a = attr(ROOT, FileType::Directory, e.mode, e.uid, e.gid, e.mtime);
                self.node_mut(ROOT).attr = a;
                self.node_mut(ROOT).xattrs = xattrs(e);
            }
            return;
        }
        let (parent_path, name) = e.path.rsplit_once('/').unwrap_or(("", &e.path));
        let parent = self.dir(parent_path, by_path);
        if name == ".wh..wh..opq" {
            let p = self.node_mut(parent);
            p.xattrs.retain(|(n, _)| n != "trusted.overlay.opaque");
            p.xattrs.push(("trusted.overlay.opaque".into(), b"y".to_vec()));
            return;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            // overlayfs's whiteout: a 0/0 character device.
            self.replace(parent, hidden);
            let ino = self.push(parent, hidden, attr(0, FileType::CharDevice, 0, e.uid, e.gid, e.mtime));
            let full = if parent_path.is_empty() { hidden.to_string() } else { format!("{parent_path}/{hidden}") };
            by_path.insert(full, ino);
            return;
        }
        if e.kind == Kind::Dir {
            if let Some(&ino) = self.node(parent).and_then(|p| p.children.get(OsStr::new(name))) {
                if self.node(ino).is_some_and(|n| n.attr.kind == FileType::Directory) {
                    let n = self.node_mut(ino);
                    n.attr =
                        FileAttr { ino: INodeNo(ino), ..attr(ino, FileType::Directory, e.mode, e.uid, e.gid, e.mtime) };
                    n.xattrs = xattrs(e);
                    by_path.insert(e.path.clone(), ino);
                    return;
                }
            }
        }
        self.replace(parent, name);
        if e.kind == Kind::Hardlink {
            let target = e.link.as_deref().and_then(|t| by_path.get(t)).copied();
            match target {
                Some(t) if self.node(t).is_some_and(|n| n.attr.kind != FileType::Directory) => {
                    self.node_mut(parent).children.insert(OsString::from(name), t);
                    by_path.insert(e.path.clone(), t);
                }
                _ => tracing::warn!(path = %e.path, "hard link to a missing file is left out"),
            }
            return;
        }
        let kind = match e.kind {
            Kind::File | Kind::Hardlink => FileType::RegularFile,
            Kind::Dir => FileType::Directory,
            Kind::Symlink => FileType::Symlink,
            Kind::Char => FileType::CharDevice,
            Kind::Block => FileType::BlockDevice,
            Kind::Fifo => FileType::NamedPipe,
        };
        let mut a = attr(0, kind, e.mode, e.uid, e.gid, e.mtime);
        a.rdev = makedev(e.devmajor, e.devminor);
        let ino = self.push(parent, name, a);
        let n = self.node_mut(ino);
        n.xattrs = xattrs(e);
        match e.kind {
            Kind::File => {
                n.attr.size = e.size;
                n.attr.blocks = e.size.div_ceil(512);
                n.data = Some((e.offset, e.size));
            }
            Kind::Symlink => {
                n.link = e.link.clone().unwrap_or_default().into_bytes();
                n.attr.size = n.link.len() as u64;
            }
            _ => {}
        }
        by_path.insert(e.path.clone(), ino);
    }

    /// Unlinks `name` from `parent` before a later entry takes the name.
    fn replace(&mut self, parent: u64, name: &str) {
        self.node_mut(parent).children.remove(OsStr::new(name));
    }

    fn count_links(&mut self) {
        let mut links: HashMap<u64, u32> = HashMap::new();
        for n in &self.nodes {
            for &c in n.children.values() {
                *links.entry(c).or_default() += 1;
            }
        }
        for i in 0..self.nodes.len() {
            let ino = i as u64 + 1;
            let n = &self.nodes[i];
            let nlink = if n.attr.kind == FileType::Directory {
                2 + n
                    .children
                    .values()
                    .filter(|c| self.nodes[**c as usize - 1].attr.kind == FileType::Directory)
                    .count() as u32
            } else {
                links.get(&ino).copied().unwrap_or(1)
            };
            self.nodes[i].attr.nlink = nlink;
        }
    }
}

fn xattrs(e: &Entry) -> Vec<(OsString, Vec<u8>)> {
    let b64 = base64::engine::general_purpose::STANDARD;
    e.xattrs.iter().filter_map(|(k, v)| Some((OsString::from(k), b64.decode(v).ok()?))).collect()
}

fn xattr_reply(data: &[u8], size: u32, reply: ReplyXattr) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

impl fuser::Filesystem for LazyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.node(parent.0).and_then(|p| p.children.get(name)).and_then(|c| self.node(*c)) {
            Some(n) => reply.entry(&TTL, &n.attr, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino.0) {
            Some(n) => reply.attr(&TTL, &n.attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node(ino.0) {
            Some(n) if n.attr.kind == FileType::Symlink => reply.data(&n.link),
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.node(ino.0) {
            None => reply.error(Errno::ENOENT),
            Some(_) if flags.0 & libc::O_ACCMODE != libc::O_RDONLY => reply.error(Errno::EROFS),
            Some(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some((start, len, perm)) = self.node(ino.0).and_then(|n| n.data.map(|(s, l)| (s, l, n.attr.perm))) else {
            reply.error(Errno::EISDIR);
            return;
        };
        if offset >= len {
            reply.data(&[]);
            return;
        }
        let want = (size as u64).min(len - offset);
        let layer = self.layer.clone();
        self.rt.spawn(async move {
            let checked = layer.check_header(start, len, u32::from(perm)).await;
            let read = match checked {
                Ok(()) => layer.read(start + offset, want).await,
                Err(e) => Err(e),
            };
            match read {
                Ok(d) => reply.data(&d),
                Err(e) => {
                    tracing::error!(error = %e, "read failed; the reader gets EIO");
                    reply.error(Errno::EIO)
                }
            }
        });
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let Some(n) = self.node(ino.0) else {
            reply.error(Errno::ENOENT);
            return;
        };
        let mut all: Vec<(u64, FileType, &OsStr)> =
            vec![(ino.0, FileType::Directory, OsStr::new(".")), (n.parent, FileType::Directory, OsStr::new(".."))];
        for (name, &c) in &n.children {
            let kind = self.node(c).map(|c| c.attr.kind).unwrap_or(FileType::RegularFile);
            all.push((c, kind, name.as_os_str()));
        }
        for (i, (ino, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.node(ino.0).and_then(|n| n.xattrs.iter().find(|(k, _)| k == name)) {
            Some((_, v)) => xattr_reply(v, size, reply),
            None => reply.error(Errno::NO_XATTR),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let Some(n) = self.node(ino.0) else {
            reply.error(Errno::ENOENT);
            return;
        };
        let mut list = Vec::new();
        for (k, _) in &n.xattrs {
            list.extend_from_slice(k.as_bytes());
            list.push(0);
        }
        xattr_reply(&list, size, reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = self.layer.index.size.div_ceil(4096);
        reply.statfs(blocks, 0, 0, self.nodes.len() as u64, 0, 4096, 255, 4096);
    }
}

/// Mounts `fs` read-only at `mountpoint` and serves it until unmounted.
pub fn serve(fs: LazyFs, mountpoint: &std::path::Path) -> std::io::Result<()> {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::RO,
        fuser::MountOption::FSName("berth".into()),
        fuser::MountOption::Subtype("berth".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::Dev,
        fuser::MountOption::Suid,
    ];
    config.acl = fuser::SessionACL::All;
    config.n_threads = Some(4);
    fuser::mount(fs, mountpoint, &config)
}
