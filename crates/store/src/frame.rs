//! The framing shared by snapshot files (`snapfile`) and cold run files (`cold`): a record at a
//! time, each with its own checksum, so a reader never holds more than one record and a copy
//! between the two file kinds moves frames as they are.
//!
//! ```text
//! frame = tag u8 | length u32 | crc32 u32 (of tag and payload) | payload
//! entry = key length u32 | key | value            (the payload of a TAG_ENTRY frame)
//! ```
//! Integers are big-endian.

use std::io::{Read, Write};

use crate::error::StoreError;

/// A frame larger than this is corrupt.
pub(crate) const MAX_FRAME: u32 = 1 << 30;
/// Bytes before a frame's payload.
pub(crate) const FRAME_HEAD: u64 = 9;

/// A key and its value (carried trees in a snapshot, cold rows in a run file).
pub(crate) const TAG_ENTRY: u8 = 8;
/// The last frame: the number of frames before it, u64.
pub(crate) const TAG_END: u8 = 0xFF;

pub(crate) fn corrupt(what: &'static str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::corrupt(what, detail)
}

/// Writes frames into `out`.
#[derive(Debug)]
pub(crate) struct FrameWriter<W: Write> {
    pub(crate) out: W,
    /// A reused buffer for encoding records.
    pub(crate) buf: Vec<u8>,
    pub(crate) frames: u64,
    pub(crate) bytes: u64,
    /// What the file is, for errors.
    pub(crate) what: &'static str,
}

impl<W: Write> FrameWriter<W> {
    pub(crate) fn new(out: W, what: &'static str) -> Self {
        FrameWriter {
            out,
            buf: Vec::new(),
            frames: 0,
            bytes: 0,
            what,
        }
    }

    /// Bytes written before the frames (a magic, a format), counted in `bytes`.
    pub(crate) fn preamble(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.out.write_all(bytes)?;
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    pub(crate) fn raw(&mut self, tag: u8, payload: &[u8]) -> Result<(), StoreError> {
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|l| *l <= MAX_FRAME)
            .ok_or_else(|| corrupt(self.what, format!("a record of {} bytes", payload.len())))?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&[tag]);
        crc.update(payload);
        self.out.write_all(&[tag])?;
        self.out.write_all(&len.to_be_bytes())?;
        self.out.write_all(&crc.finalize().to_be_bytes())?;
        self.out.write_all(payload)?;
        self.frames += 1;
        self.bytes += FRAME_HEAD + u64::from(len);
        Ok(())
    }

    /// One entry frame.
    pub(crate) fn entry(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let klen = u32::try_from(key.len()).map_err(|_| corrupt(self.what, "a key over 4 GiB"))?;
        let mut payload = std::mem::take(&mut self.buf);
        payload.clear();
        payload.extend_from_slice(&klen.to_be_bytes());
        payload.extend_from_slice(key);
        payload.extend_from_slice(value);
        let r = self.raw(TAG_ENTRY, &payload);
        self.buf = payload;
        r
    }

    /// One entry frame per key and value of a sled iteration.
    pub(crate) fn entries(&mut self, kvs: sled::Iter) -> Result<(), StoreError> {
        for kv in kvs {
            let (k, v) = kv?;
            self.entry(&k, &v)?;
        }
        Ok(())
    }

    /// The end frame: how many frames came before it.
    pub(crate) fn end(&mut self) -> Result<(), StoreError> {
        let frames = self.frames;
        self.raw(TAG_END, &frames.to_be_bytes())?;
        self.out.flush()?;
        Ok(())
    }
}

/// The key and the value of an entry frame's payload.
pub(crate) fn split_entry<'a>(
    what: &'static str,
    b: &'a [u8],
) -> Result<(&'a [u8], &'a [u8]), StoreError> {
    let klen = b
        .get(..4)
        .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
        .ok_or_else(|| corrupt(what, "an entry shorter than its key length"))?;
    if b.len() - 4 < klen {
        return Err(corrupt(what, "an entry shorter than its key"));
    }
    Ok(b[4..].split_at(klen))
}

/// A frame's header: its tag, payload length and checksum.
pub(crate) fn parse_head(what: &'static str, head: &[u8; 9]) -> Result<(u8, u32, u32), StoreError> {
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    if len > MAX_FRAME {
        return Err(corrupt(what, format!("a frame of {len} bytes")));
    }
    Ok((
        head[0],
        len,
        u32::from_be_bytes([head[5], head[6], head[7], head[8]]),
    ))
}

/// Whether `payload` is what a frame of `tag` with checksum `crc` holds.
pub(crate) fn crc_matches(tag: u8, payload: &[u8], crc: u32) -> bool {
    let mut h = crc32fast::Hasher::new();
    h.update(&[tag]);
    h.update(payload);
    h.finalize() == crc
}

/// Makes the names in `dir` durable (a file renamed or created there survives a crash).
pub(crate) fn sync_dir(dir: &std::path::Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Deletes the `.tmp` files in `dir`: framed files whose write a stop interrupted. A missing
/// `dir` has none; a file that cannot be deleted does not stop the others (the first such
/// error is returned).
pub(crate) fn remove_tmp_files(dir: &std::path::Path) -> Result<(), StoreError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let mut first_error = None;
    for e in entries.flatten() {
        if e.file_name().to_str().is_some_and(|n| n.ends_with(".tmp")) {
            if let Err(err) = std::fs::remove_file(e.path()) {
                first_error.get_or_insert(err);
            }
        }
    }
    first_error.map_or(Ok(()), |e| Err(e.into()))
}

/// How a [`FrameReader`] passes over a frame it is told to skip.
pub trait Skip: Read {
    /// Moves past the next `n` bytes.
    fn skip(&mut self, n: u64) -> std::io::Result<()> {
        let copied = std::io::copy(&mut self.take(n), &mut std::io::sink())?;
        if copied == n {
            Ok(())
        } else {
            Err(std::io::ErrorKind::UnexpectedEof.into())
        }
    }
}

impl Skip for &[u8] {}
impl<R: Read + ?Sized> Skip for &mut R {}

/// A file read through a buffer seeks past what it skips (its length was checked when the
/// file was opened; a seek past the end shows as a short read at the next frame).
impl Skip for std::io::BufReader<std::fs::File> {
    fn skip(&mut self, n: u64) -> std::io::Result<()> {
        let n =
            i64::try_from(n).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        self.seek_relative(n)
    }
}

/// Reads frames from `input`, checking each one's crc.
pub(crate) struct FrameReader<R: Read> {
    pub(crate) input: R,
    /// The payload of the frame read last.
    pub(crate) buf: Vec<u8>,
    pub(crate) frames: u64,
    pub(crate) what: &'static str,
}

impl<R: Read> FrameReader<R> {
    pub(crate) fn new(input: R, what: &'static str) -> Self {
        FrameReader {
            input,
            buf: Vec::new(),
            frames: 0,
            what,
        }
    }

    /// The next frame's tag; its payload is in `self.buf`. `None` at a clean end of input.
    pub(crate) fn next(&mut self) -> Result<Option<u8>, StoreError> {
        let Some((tag, len, crc)) = self.head()? else {
            return Ok(None);
        };
        self.rest(tag, len, crc).map(Some)
    }

    /// Reads the payload of a frame whose header was read.
    fn rest(&mut self, tag: u8, len: u32, crc: u32) -> Result<u8, StoreError> {
        self.buf.clear();
        // `take` + `read_to_end` grows the buffer as bytes arrive, so a damaged length cannot
        // allocate a gigabyte up front.
        (&mut self.input)
            .take(u64::from(len))
            .read_to_end(&mut self.buf)?;
        if self.buf.len() != len as usize {
            return Err(corrupt(
                self.what,
                format!("the file ends inside frame {} (tag {tag})", self.frames),
            ));
        }
        if !crc_matches(tag, &self.buf, crc) {
            return Err(corrupt(
                self.what,
                format!("frame {} (tag {tag}) fails its checksum", self.frames),
            ));
        }
        self.frames += 1;
        Ok(tag)
    }

    fn head(&mut self) -> Result<Option<(u8, u32, u32)>, StoreError> {
        let mut head = [0u8; 9];
        let mut got = 0;
        while got < head.len() {
            match self.input.read(&mut head[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(corrupt(self.what, "the file ends inside a frame header")),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        parse_head(self.what, &head).map(Some)
    }

    pub(crate) fn decode<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
    ) -> Result<T, StoreError> {
        ciborium::from_reader(self.buf.as_slice())
            .map_err(|e| corrupt(self.what, format!("{what} record {}: {e}", self.frames - 1)))
    }
}

impl<R: Skip> FrameReader<R> {
    /// [`next`](Self::next), except that the payload of a frame tagged `skip` is passed over
    /// unread and unchecked (`self.buf` is then empty).
    pub(crate) fn next_skipping(&mut self, skip: u8) -> Result<Option<u8>, StoreError> {
        let Some((tag, len, crc)) = self.head()? else {
            return Ok(None);
        };
        if tag != skip {
            return self.rest(tag, len, crc).map(Some);
        }
        self.buf.clear();
        self.input.skip(u64::from(len)).map_err(|_| {
            corrupt(
                self.what,
                format!("the file ends inside frame {} (tag {tag})", self.frames),
            )
        })?;
        self.frames += 1;
        Ok(Some(tag))
    }
}
