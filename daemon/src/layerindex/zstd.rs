//! Random access into multi-frame zstd streams: a zstd frame is decoded
//! on its own, so a frame boundary is a resume point that needs no saved
//! state (unlike gzip's [`super::zran`]). A layer compressed as one frame
//! has no such points and is not indexed; zstd:chunked and other seekable
//! producers write many. Skippable frames (metadata some producers embed)
//! are passed over.

use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};
use std::io::{self, BufRead, BufReader, Read};

/// A reader that counts what it hands on.
struct Counting<R> {
    inner: BufReader<R>,
    count: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

fn bad(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}"))
}

/// Decodes consecutive zstd frames as one stream, noting where each data
/// frame starts: `(compressed offset, uncompressed offset)`.
pub struct FramesReader<R> {
    src: Counting<R>,
    dec: FrameDecoder,
    in_frame: bool,
    total_out: u64,
    pub frames: Vec<(u64, u64)>,
}

impl<R: Read> FramesReader<R> {
    pub fn new(inner: R) -> FramesReader<R> {
        FramesReader {
            src: Counting { inner: BufReader::with_capacity(64 * 1024, inner), count: 0 },
            dec: FrameDecoder::new(),
            in_frame: false,
            total_out: 0,
            frames: Vec::new(),
        }
    }

    pub fn into_inner(self) -> R {
        self.src.inner.into_inner()
    }

    /// Starts the next data frame; false at the end of the stream.
    fn next_frame(&mut self) -> io::Result<bool> {
        loop {
            if self.src.inner.fill_buf()?.is_empty() {
                return Ok(false);
            }
            let start = self.src.count;
            match self.dec.init(&mut self.src) {
                Ok(()) => {
                    self.frames.push((start, self.total_out));
                    self.in_frame = true;
                    return Ok(true);
                }
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame { length, .. })) => {
                    let skipped = io::copy(&mut (&mut self.src).take(u64::from(length)), &mut io::sink())?;
                    if skipped != u64::from(length) {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "zstd: skippable frame is truncated"));
                    }
                }
                Err(e) => return Err(bad(e)),
            }
        }
    }
}

impl<R: Read> Read for FramesReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.in_frame && !self.next_frame()? {
                return Ok(0);
            }
            while self.dec.can_collect() < buf.len() && !self.dec.is_finished() {
                let want = buf.len() - self.dec.can_collect();
                self.dec.decode_blocks(&mut self.src, BlockDecodingStrategy::UptoBytes(want)).map_err(bad)?;
            }
            let n = self.dec.read(buf)?;
            if n > 0 {
                self.total_out += n as u64;
                return Ok(n);
            }
            if self.dec.is_finished() {
                if let (Some(want), Some(got)) = (self.dec.get_checksum_from_data(), self.dec.get_calculated_checksum())
                {
                    if want != got {
                        return Err(bad("frame checksum mismatch"));
                    }
                }
                self.in_frame = false;
            }
        }
    }
}

/// Reads `len` uncompressed bytes at `offset` from `compressed`, which
/// starts at a frame boundary whose uncompressed offset is `frame_out`.
pub fn read_at(compressed: impl Read, frame_out: u64, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut r = FramesReader::new(compressed);
    let skip = offset - frame_out;
    if io::copy(&mut (&mut r).take(skip), &mut io::sink())? != skip {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "zstd stream ended early"));
    }
    let mut out = Vec::with_capacity(len);
    (&mut r).take(len as u64).read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// Compresses with the `zstd` command, one frame per piece.
    pub fn zstd_frames(pieces: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in pieces {
            let mut child = std::process::Command::new("zstd")
                .args(["-q", "-c", "-3"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("zstd");
            let mut stdin = child.stdin.take().unwrap();
            let data = p.to_vec();
            let w = std::thread::spawn(move || stdin.write_all(&data));
            let o = child.wait_with_output().unwrap();
            w.join().unwrap().unwrap();
            out.extend_from_slice(&o.stdout);
        }
        out
    }

    #[test]
    fn frames_are_resume_points() {
        let data: Vec<u8> = (0..900_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 ^ (i % 7) as u8).collect();
        let mut z = zstd_frames(&[&data[..300_000], &data[300_000..600_000]]);
        // A skippable frame between data frames is passed over.
        z.extend_from_slice(&0x184D2A50u32.to_le_bytes());
        z.extend_from_slice(&4u32.to_le_bytes());
        z.extend_from_slice(b"meta");
        z.extend_from_slice(&zstd_frames(&[&data[600_000..]]));
        let mut r = FramesReader::new(&z[..]);
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        assert_eq!(all, data);
        assert_eq!(r.frames.iter().map(|f| f.1).collect::<Vec<_>>(), [0, 300_000, 600_000]);
        let (input, out) = r.frames[1];
        let got = read_at(&z[input as usize..], out, 450_000, 200_000).unwrap();
        assert_eq!(got, &data[450_000..650_000], "across the skippable frame");
    }
}
