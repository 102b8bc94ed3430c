//! Random access into a gzip stream, zran-style: while the stream is
//! inflated once, the decompressor's state is saved at deflate block
//! boundaries (the compressed bit position and the last 32 KiB of output,
//! which is all a deflate block can refer back to). Inflating can later
//! resume at any saved point instead of at the start of the layer.
//!
//! Resuming in the middle of a byte needs `inflatePrime` and a preset
//! dictionary needs `inflateSetDictionary`; neither is offered by the
//! pure-Rust inflaters, so this is the one place berthd calls zlib
//! directly (libz-sys). Everything unsafe is inside [`Inflater`].
#![allow(unsafe_code)] // zlib through libz-sys, kept inside `Inflater` and its allocator

use libz_sys as z;
use std::io::{self, Read};

/// Deflate's maximum back-reference distance.
pub const WINDOW: usize = 32 * 1024;

/// Where inflating can resume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Offset in the uncompressed stream.
    pub out: u64,
    /// Offset of the first whole compressed byte after the point.
    pub input: u64,
    /// Bits (0–7) of the byte before `input` that belong after the point.
    pub bits: u8,
    /// The uncompressed bytes just before `out` (up to [`WINDOW`]).
    pub window: Vec<u8>,
}

/// zlib's allocator: libz-sys leaves `zalloc`/`zfree` to the caller.
///
/// # Safety
/// Called by zlib only, with the counts it needs; calloc accepts any
/// values (it returns null on overflow, which zlib reports as Z_MEM_ERROR).
unsafe extern "C" fn zalloc(_: z::voidpf, items: z::uInt, size: z::uInt) -> z::voidpf {
    // SAFETY: see above; calloc has no other precondition.
    unsafe { libc::calloc(items as usize, size as usize) }
}

/// # Safety
/// Called by zlib only, with a pointer [`zalloc`] returned (or null), once.
unsafe extern "C" fn zfree(_: z::voidpf, p: z::voidpf) {
    // SAFETY: `p` came from calloc above and is freed exactly once.
    unsafe { libc::free(p) }
}

/// An owned zlib inflate stream. Boxed: zlib keeps a pointer to it.
struct Inflater {
    strm: Box<z::z_stream>,
}

/// Raw deflate data (resuming at a checkpoint).
const RAW: i32 = -15;
/// A gzip member, header and trailer checked.
const GZIP: i32 = 31;

impl Inflater {
    fn new(window_bits: i32) -> io::Result<Inflater> {
        let mut strm = Box::new(z::z_stream {
            next_in: std::ptr::null_mut(),
            avail_in: 0,
            total_in: 0,
            next_out: std::ptr::null_mut(),
            avail_out: 0,
            total_out: 0,
            msg: std::ptr::null_mut(),
            state: std::ptr::null_mut(),
            zalloc,
            zfree,
            opaque: std::ptr::null_mut(),
            data_type: 0,
            adler: 0,
            reserved: 0,
        });
        // SAFETY: strm is a valid, boxed z_stream (its address stays put
        // while zlib keeps a pointer to it); the version and size are zlib's own.
        let rc = unsafe {
            z::inflateInit2_(
                &mut *strm,
                window_bits,
                z::zlibVersion(),
                std::mem::size_of::<z::z_stream>() as std::os::raw::c_int,
            )
        };
        if rc != z::Z_OK {
            return Err(zerr(rc, "inflateInit2"));
        }
        Ok(Inflater { strm })
    }

    fn reset(&mut self, window_bits: i32) -> io::Result<()> {
        // SAFETY: the stream was initialised by inflateInit2 (in new) and
        // not ended (only Drop ends it).
        let rc = unsafe { z::inflateReset2(&mut *self.strm, window_bits) };
        if rc != z::Z_OK {
            return Err(zerr(rc, "inflateReset2"));
        }
        Ok(())
    }

    fn prime(&mut self, bits: u8, value: u8) -> io::Result<()> {
        // SAFETY: initialised stream, not ended; bits is 1..=7, as
        // inflatePrime requires.
        let rc = unsafe { z::inflatePrime(&mut *self.strm, bits as i32, (value >> (8 - bits)) as i32) };
        if rc != z::Z_OK {
            return Err(zerr(rc, "inflatePrime"));
        }
        Ok(())
    }

    fn set_dictionary(&mut self, dict: &[u8]) -> io::Result<()> {
        if dict.is_empty() {
            return Ok(());
        }
        // SAFETY: initialised raw stream; dict is a live slice of the stated
        // length for the whole call, and zlib copies it.
        let rc = unsafe { z::inflateSetDictionary(&mut *self.strm, dict.as_ptr(), dict.len() as z::uInt) };
        if rc != z::Z_OK {
            return Err(zerr(rc, "inflateSetDictionary"));
        }
        Ok(())
    }

    /// Inflates from `input` into `output`, stopping at block boundaries when
    /// `block` is set. Returns (consumed, produced, zlib's code).
    fn inflate(&mut self, input: &[u8], output: &mut [u8], block: bool) -> io::Result<(usize, usize, i32)> {
        let s = &mut *self.strm;
        s.next_in = input.as_ptr() as *mut u8;
        s.avail_in = input.len().min(u32::MAX as usize) as z::uInt;
        s.next_out = output.as_mut_ptr();
        s.avail_out = output.len().min(u32::MAX as usize) as z::uInt;
        let (in0, out0) = (s.avail_in, s.avail_out);
        // SAFETY: initialised stream; next_in/next_out point into slices that
        // live for the whole call, with the lengths given in avail_in/avail_out.
        // Both pointers are cleared right after, so zlib keeps none.
        let rc = unsafe { z::inflate(s, if block { z::Z_BLOCK } else { z::Z_NO_FLUSH }) };
        let consumed = (in0 - s.avail_in) as usize;
        let produced = (out0 - s.avail_out) as usize;
        s.next_in = std::ptr::null_mut();
        s.next_out = std::ptr::null_mut();
        match rc {
            z::Z_OK | z::Z_STREAM_END => Ok((consumed, produced, rc)),
            // No progress possible with what was given: the caller decides.
            z::Z_BUF_ERROR => Ok((consumed, produced, rc)),
            z::Z_NEED_DICT => Err(io::Error::new(io::ErrorKind::InvalidData, "deflate stream needs a dictionary")),
            _ => Err(zerr(rc, "inflate")),
        }
    }

    fn data_type(&self) -> i32 {
        self.strm.data_type
    }
}

impl Drop for Inflater {
    fn drop(&mut self) {
        // SAFETY: initialised in new(); Drop runs once, so it is ended
        // exactly once.
        unsafe {
            z::inflateEnd(&mut *self.strm);
        }
    }
}

fn zerr(rc: i32, what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("gzip: {what} failed (zlib code {rc}): corrupt or not gzip"))
}

/// Inflates a gzip stream (any number of members) as a [`Read`], saving a
/// [`Checkpoint`] about every `spacing` uncompressed bytes.
pub struct IndexingReader<R> {
    inner: R,
    inf: Inflater,
    input: Vec<u8>,
    in_pos: usize,
    in_len: usize,
    /// Compressed bytes consumed by zlib so far.
    total_in: u64,
    /// Uncompressed bytes produced so far.
    total_out: u64,
    /// The last WINDOW bytes of output, as a ring.
    ring: Vec<u8>,
    spacing: u64,
    last_point: Option<u64>,
    pub checkpoints: Vec<Checkpoint>,
    /// Between members: the next bytes are a gzip header or the end.
    member_done: bool,
    eof: bool,
}

impl<R: Read> IndexingReader<R> {
    pub fn new(inner: R, spacing: u64) -> io::Result<IndexingReader<R>> {
        Ok(IndexingReader {
            inner,
            inf: Inflater::new(GZIP)?,
            input: vec![0; 64 * 1024],
            in_pos: 0,
            in_len: 0,
            total_in: 0,
            total_out: 0,
            ring: vec![0; WINDOW],
            spacing,
            last_point: None,
            checkpoints: Vec::new(),
            member_done: false,
            eof: false,
        })
    }

    /// The compressed reader, once the stream has been read.
    pub fn into_inner(self) -> R {
        self.inner
    }

    pub fn total_out(&self) -> u64 {
        self.total_out
    }

    pub fn total_in(&self) -> u64 {
        self.total_in
    }

    fn fill(&mut self) -> io::Result<bool> {
        if self.in_pos < self.in_len {
            return Ok(true);
        }
        let n = self.inner.read(&mut self.input)?;
        self.in_pos = 0;
        self.in_len = n;
        Ok(n > 0)
    }

    fn window(&self) -> Vec<u8> {
        let have = self.total_out.min(WINDOW as u64) as usize;
        let end = (self.total_out % WINDOW as u64) as usize;
        let mut w = Vec::with_capacity(have);
        if have == WINDOW {
            w.extend_from_slice(&self.ring[end..]);
            w.extend_from_slice(&self.ring[..end]);
        } else {
            w.extend_from_slice(&self.ring[..have]);
        }
        w
    }

    fn remember(&mut self, out: &[u8]) {
        // Keep the last WINDOW bytes in the ring.
        let tail = if out.len() > WINDOW { &out[out.len() - WINDOW..] } else { out };
        let mut pos = ((self.total_out - tail.len() as u64) % WINDOW as u64) as usize;
        for chunk in [tail] {
            let mut rest = chunk;
            while !rest.is_empty() {
                let n = rest.len().min(WINDOW - pos);
                self.ring[pos..pos + n].copy_from_slice(&rest[..n]);
                rest = &rest[n..];
                pos = (pos + n) % WINDOW;
            }
        }
    }
}

impl<R: Read> Read for IndexingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.eof {
            return Ok(0);
        }
        loop {
            if !self.fill()? {
                if self.member_done {
                    self.eof = true;
                    return Ok(0);
                }
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "gzip stream is truncated"));
            }
            if self.member_done {
                // Another member follows, or zero padding some tools append.
                if self.input[self.in_pos..self.in_len].iter().all(|b| *b == 0) {
                    self.total_in += (self.in_len - self.in_pos) as u64;
                    self.in_pos = self.in_len;
                    continue;
                }
                self.inf.reset(GZIP)?;
                self.member_done = false;
            }
            let (c, p, rc) = self.inf.inflate(&self.input[self.in_pos..self.in_len], buf, true)?;
            self.in_pos += c;
            self.total_in += c as u64;
            self.total_out += p as u64;
            self.remember(&buf[..p]);
            let dt = self.inf.data_type();
            // At a block boundary that is not the end of the member: a point
            // to resume from (zran's rule, with the first one at the start).
            if rc != z::Z_STREAM_END && dt & 128 != 0 && dt & 64 == 0 {
                let due = match self.last_point {
                    None => true,
                    Some(last) => self.total_out - last >= self.spacing,
                };
                if due {
                    self.checkpoints.push(Checkpoint {
                        out: self.total_out,
                        input: self.total_in,
                        bits: (dt & 7) as u8,
                        window: self.window(),
                    });
                    self.last_point = Some(self.total_out);
                }
            }
            if rc == z::Z_STREAM_END {
                self.member_done = true;
            }
            if rc == z::Z_BUF_ERROR && c == 0 && p == 0 && self.in_pos < self.in_len {
                return Err(zerr(rc, "inflate"));
            }
            if p > 0 {
                return Ok(p);
            }
        }
    }
}

/// Reads `len` uncompressed bytes at `offset` (≥ `cp.out`), inflating from
/// checkpoint `cp`. `compressed` must start at byte `cp.input - 1` when
/// `cp.bits > 0`, else at `cp.input`. Fewer bytes come back only at the end
/// of the stream.
pub fn read_at(mut compressed: impl Read, cp: &Checkpoint, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    assert!(offset >= cp.out, "offset before the checkpoint");
    let mut inf = Inflater::new(RAW)?;
    if cp.bits > 0 {
        let mut b = [0u8; 1];
        compressed.read_exact(&mut b)?;
        inf.prime(cp.bits, b[0])?;
    }
    inf.set_dictionary(&cp.window)?;
    let mut skip = offset - cp.out;
    let mut out = Vec::with_capacity(len);
    let mut input = vec![0u8; 64 * 1024];
    let (mut pos, mut filled) = (0usize, 0usize);
    let mut scratch = vec![0u8; 64 * 1024];
    let mut raw = true;
    let mut member_done = false;
    while out.len() < len {
        if pos == filled {
            filled = compressed.read(&mut input)?;
            pos = 0;
            if filled == 0 {
                if member_done {
                    break;
                }
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "gzip stream is truncated"));
            }
        }
        if member_done {
            if input[pos..filled].iter().all(|b| *b == 0) {
                pos = filled;
                continue;
            }
            inf.reset(GZIP)?;
            raw = false;
            member_done = false;
        }
        let want = if skip > 0 { scratch.len().min(skip as usize) } else { scratch.len().min(len - out.len()) };
        let (c, p, rc) = inf.inflate(&input[pos..filled], &mut scratch[..want], false)?;
        pos += c;
        if skip > 0 {
            skip -= p as u64;
        } else {
            out.extend_from_slice(&scratch[..p]);
        }
        if rc == z::Z_STREAM_END {
            member_done = true;
            if raw {
                // Skip the trailer (CRC32 and size) of the member we resumed
                // in; its CRC covers bytes we never saw.
                let mut need = 8usize;
                while need > 0 {
                    if pos == filled {
                        filled = compressed.read(&mut input)?;
                        pos = 0;
                        if filled == 0 {
                            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "gzip trailer is truncated"));
                        }
                    }
                    let n = need.min(filled - pos);
                    pos += n;
                    need -= n;
                }
            }
        } else if c == 0 && p == 0 && rc == z::Z_BUF_ERROR && pos < filled {
            return Err(zerr(rc, "inflate"));
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// gzip-compresses with the system's zlib through the `gzip` format
    /// (libz-sys has no writer; deflate via the command line keeps the test
    /// honest about real gzip streams).
    pub fn gzip(data: &[u8], level: &str) -> Vec<u8> {
        let mut child = std::process::Command::new("gzip")
            .args(["-c", "-n", level])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("gzip");
        let mut stdin = child.stdin.take().unwrap();
        let data = data.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&data));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        out.stdout
    }

    fn sample(len: usize) -> Vec<u8> {
        // Compressible but varied: words with a running counter.
        let mut v = Vec::with_capacity(len);
        let mut i = 0u64;
        while v.len() < len {
            v.extend_from_slice(format!("line {i} {}\n", i.wrapping_mul(2654435761) % 1000).as_bytes());
            i += 1;
        }
        v.truncate(len);
        v
    }

    fn resume(gz: &[u8], cps: &[Checkpoint], offset: u64, len: usize) -> Vec<u8> {
        let cp = cps.iter().rev().find(|c| c.out <= offset).unwrap();
        let start = (cp.input - if cp.bits > 0 { 1 } else { 0 }) as usize;
        read_at(&gz[start..], cp, offset, len).unwrap()
    }

    #[test]
    fn every_checkpoint_resumes_exactly() {
        let data = sample(3 << 20);
        let gz = gzip(&data, "-6");
        let mut r = IndexingReader::new(&gz[..], 256 * 1024).unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        assert!(r.checkpoints.len() >= 5, "{} checkpoints", r.checkpoints.len());
        assert!(r.checkpoints.iter().any(|c| c.bits != 0), "some points are mid-byte");
        for cp in &r.checkpoints {
            let got = resume(&gz, &r.checkpoints, cp.out, 5000);
            let end = (cp.out as usize + 5000).min(data.len());
            assert_eq!(got, &data[cp.out as usize..end]);
        }
        for off in [0u64, 1, 100_000, 1_234_567, (3 << 20) - 10] {
            assert_eq!(
                resume(&gz, &r.checkpoints, off, 70_000),
                &data[off as usize..(off as usize + 70_000).min(data.len())]
            );
        }
    }

    #[test]
    fn multi_member_streams_and_corruption() {
        let a = sample(600_000);
        let b: Vec<u8> = sample(900_000).into_iter().rev().collect();
        let mut gz = gzip(&a, "-1");
        gz.extend_from_slice(&gzip(&b, "-9"));
        let mut r = IndexingReader::new(&gz[..], 100_000).unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        let mut all = a.clone();
        all.extend_from_slice(&b);
        assert_eq!(out, all);
        // A read that starts in member one and ends in member two.
        let got = resume(&gz, &r.checkpoints, 550_000, 200_000);
        assert_eq!(got, &all[550_000..750_000]);

        let mut bad = gzip(&a, "-6");
        let n = bad.len();
        bad[n / 2] ^= 0xff;
        let mut out = Vec::new();
        assert!(IndexingReader::new(&bad[..], 100_000).unwrap().read_to_end(&mut out).is_err());
        let truncated = &gz[..gz.len() / 2];
        assert!(IndexingReader::new(truncated, 100_000).unwrap().read_to_end(&mut Vec::new()).is_err());
    }
}
