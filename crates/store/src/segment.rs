//! How event records are laid out in the event files ([`crate::event_files`]): in *segments*,
//! several consecutive records under one key.
//!
//! A segment is stored under the big-endian seq of its first record and holds up to
//! [`SEGMENT_MAX`] records of one command (a command's events never share a segment with
//! another command's, so the layout depends only on the commands, not on how openraft batched
//! them into applies). Its value is [`SEGMENT_TAG`] followed by each record as a little-endian
//! `u32` length and the record's bytes (a protobuf `muster.v1.EventRecord`). The seq of the
//! i-th record is the key plus i; each record also carries its own seq and hash-chain link, so a
//! removed, changed or reordered record is still caught at its seq.
//!
//! Why not one key per event: sled copies a leaf page for every insert, which made storing the
//! events the largest single cost of applying device results (a third of the CPU of a
//! three-node cluster, see BENCHMARKS.md). One insert per segment writes the same bytes once.
//!
//! A value that does not start with [`SEGMENT_TAG`] is a lone record (the layout of earlier
//! releases: a record always starts with its seq field's tag, never with 0), read as a segment
//! of one.

use std::ops::Range;
use std::sync::Arc;

use crate::codec::u64_key;
use crate::error::StoreError;
pub use crate::event_files::edit_segments;
use crate::event_files::EventFiles;

/// The most records one segment holds: large enough that a 1,000-result command is four
/// inserts, small enough that a reader starting inside a segment skips little.
pub(crate) const SEGMENT_MAX: usize = 256;

/// First byte of a segment value.
pub const SEGMENT_TAG: u8 = 0;

/// Builds segment values record by record.
#[derive(Debug, Default)]
pub(crate) struct SegmentBuilder {
    first_seq: u64,
    count: usize,
    buf: Vec<u8>,
}

impl SegmentBuilder {
    /// Appends the record of `seq`, which must follow the previous one. Returns a finished
    /// segment when this record filled it.
    pub(crate) fn push(&mut self, seq: u64, record: &[u8]) -> Result<Option<Segment>, StoreError> {
        if self.count == 0 {
            self.first_seq = seq;
            self.buf.push(SEGMENT_TAG);
        }
        push_record(&mut self.buf, record)?;
        self.count += 1;
        Ok(if self.count == SEGMENT_MAX {
            self.finish()
        } else {
            None
        })
    }

    /// The segment built so far, if it has any record; the builder starts afresh.
    pub(crate) fn finish(&mut self) -> Option<Segment> {
        if self.count == 0 {
            return None;
        }
        Some(Segment {
            key: u64_key(self.first_seq),
            value: std::mem::take(&mut self.buf),
            records: std::mem::take(&mut self.count),
        })
    }
}

/// A finished segment: its key, its value and how many records it holds.
#[derive(Debug, PartialEq)]
pub(crate) struct Segment {
    pub(crate) key: [u8; 8],
    pub(crate) value: Vec<u8>,
    pub(crate) records: usize,
}

impl Segment {
    /// `segments` as the event files take them: (first seq, bytes).
    pub(crate) fn as_appends(segments: &[Segment]) -> Vec<(u64, &[u8])> {
        segments
            .iter()
            .map(|s| (u64::from_be_bytes(s.key), s.value.as_slice()))
            .collect()
    }
}

fn push_record(buf: &mut Vec<u8>, record: &[u8]) -> Result<(), StoreError> {
    // Commands are bounded far below 4 GiB (the API's message limits), so no event record
    // reaches it; refusing is still better than writing a length that lies.
    let len = u32::try_from(record.len()).map_err(|_| {
        StoreError::corrupt(
            "event record",
            format!("{} bytes do not fit a segment", record.len()),
        )
    })?;
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(record);
    Ok(())
}

/// The records of one segment value, in order. For tools that inspect or repair a data
/// directory by hand (and the tests that damage one on purpose); the node reads through
/// [`raw_records`].
pub fn split_segment(value: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut out = Vec::new();
    let mut cursor = Cursor::new(value);
    while let Some(range) = cursor
        .next_record(value)
        .map_err(|n| StoreError::corrupt("event segment", format!("record {n} is cut short")))?
    {
        out.push(value[range].to_vec());
    }
    Ok(out)
}

/// A segment value holding `records` (see [`split_segment`]).
pub fn join_segment(records: &[Vec<u8>]) -> Result<Vec<u8>, StoreError> {
    let mut buf = vec![SEGMENT_TAG];
    for r in records {
        push_record(&mut buf, r)?;
    }
    Ok(buf)
}

/// Where a walk through one value is.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    at: usize,
    index: usize,
    /// A lone record (see the module docs), not a segment.
    lone: bool,
}

impl Cursor {
    fn new(value: &[u8]) -> Self {
        let lone = value.first() != Some(&SEGMENT_TAG);
        Cursor {
            at: usize::from(!lone),
            index: 0,
            lone,
        }
    }

    /// The byte range of the next record of `value`; `Err(i)` when record `i` is cut short.
    fn next_record(&mut self, value: &[u8]) -> Result<Option<Range<usize>>, usize> {
        if self.lone {
            if self.index == 0 && !value.is_empty() {
                self.index = 1;
                return Ok(Some(0..value.len()));
            }
            return Ok(None);
        }
        if self.at >= value.len() {
            return Ok(None);
        }
        let start = self.at + 4;
        let len = value
            .get(self.at..start)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes)
            .ok_or(self.index)?;
        let end = start.checked_add(len as usize).ok_or(self.index)?;
        if end > value.len() {
            return Err(self.index);
        }
        self.at = end;
        self.index += 1;
        Ok(Some(start..end))
    }
}

/// One stored record as read back: the seq its place in the log gives it, and its bytes
/// (which carry the record's own idea of its seq; readers compare the two).
#[derive(Debug, Clone)]
pub(crate) struct RawRecord {
    pub(crate) seq: u64,
    value: Arc<Vec<u8>>,
    range: Range<usize>,
}

impl RawRecord {
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.value[self.range.clone()]
    }
}

/// The records with `from <= seq <= to`, in order, whether they are the ones their places
/// say (a reader checks each record's own seq against [`RawRecord::seq`]; a gap shows as a
/// jump in `seq`). A value that cannot be split ends the walk with an error naming the seq.
pub(crate) fn raw_records(log: &EventFiles, from: u64, to: u64) -> RawRecords<'_> {
    RawRecords {
        log,
        // The segment holding `from` may start before it.
        next_key: if from > to {
            None
        } else {
            Some(log.start(from))
        },
        current: None,
        from,
        to,
        failed: false,
    }
}

/// See [`raw_records`].
pub(crate) struct RawRecords<'a> {
    log: &'a EventFiles,
    /// The lowest first seq the next segment may have; `None` once the walk is past `to`.
    next_key: Option<u64>,
    /// The value being walked, the seq its next record has, and where that record starts.
    current: Option<(Arc<Vec<u8>>, u64, Cursor)>,
    from: u64,
    to: u64,
    failed: bool,
}

impl RawRecords<'_> {
    fn fail(&mut self, e: StoreError) -> Option<Result<RawRecord, StoreError>> {
        self.failed = true;
        Some(Err(e))
    }
}

impl Iterator for RawRecords<'_> {
    type Item = Result<RawRecord, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.failed {
                return None;
            }
            if let Some((value, seq, mut cursor)) = self.current.take() {
                match cursor.next_record(&value) {
                    Ok(Some(range)) => {
                        if seq > self.to {
                            self.failed = true;
                            return None;
                        }
                        let record = RawRecord {
                            seq,
                            value: value.clone(),
                            range,
                        };
                        let Some(next) = seq.checked_add(1) else {
                            return self.fail(StoreError::corrupt(
                                "event segment",
                                "a segment runs past the largest seq",
                            ));
                        };
                        self.current = Some((value, next, cursor));
                        if seq >= self.from {
                            return Some(Ok(record));
                        }
                        continue;
                    }
                    Ok(None) if cursor.index == 0 => {
                        return self.fail(StoreError::corrupt(
                            "event segment",
                            format!("the segment at seq {seq} holds no record"),
                        ))
                    }
                    Ok(None) => {}
                    Err(_) => {
                        return self.fail(StoreError::corrupt(
                            "event segment",
                            format!("the record of seq {seq} is cut short"),
                        ))
                    }
                }
            }
            let key = self.next_key?;
            match self.log.next_in(key, self.to) {
                Ok(Some((seq, value))) => {
                    self.next_key = seq.checked_add(1);
                    let cursor = Cursor::new(&value);
                    self.current = Some((value, seq, cursor));
                }
                Ok(None) => {
                    self.next_key = None;
                    return None;
                }
                Err(e) => return self.fail(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty event log; segments are appended with [`put`].
    fn log() -> (tempfile::TempDir, EventFiles) {
        let dir = tempfile::tempdir().unwrap();
        let log = EventFiles::open(dir.path()).unwrap();
        (dir, log)
    }

    fn put(t: &(tempfile::TempDir, EventFiles), key: [u8; 8], value: Vec<u8>) {
        t.1.append(&[(u64::from_be_bytes(key), &value)]).unwrap();
    }

    fn rec(seq: u64) -> Vec<u8> {
        // Any bytes will do here; real records start with 0x08.
        let mut r = vec![0x08];
        r.extend_from_slice(&seq.to_le_bytes());
        r
    }

    fn walk(t: &(tempfile::TempDir, EventFiles), from: u64, to: u64) -> Vec<(u64, Vec<u8>)> {
        raw_records(&t.1, from, to)
            .map(|r| {
                let r = r.unwrap();
                (r.seq, r.bytes().to_vec())
            })
            .collect()
    }

    #[test]
    fn builder_cuts_at_the_maximum_and_on_finish() {
        let mut b = SegmentBuilder::default();
        let mut out = Vec::new();
        for seq in 10..10 + SEGMENT_MAX as u64 + 3 {
            out.extend(b.push(seq, &rec(seq)).unwrap());
        }
        out.extend(b.finish());
        assert_eq!(b.finish(), None);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].key, u64_key(10));
        assert_eq!(out[0].records, SEGMENT_MAX);
        assert_eq!(out[1].key, u64_key(10 + SEGMENT_MAX as u64));
        assert_eq!(out[1].records, 3);
        assert_eq!(split_segment(&out[1].value).unwrap().len(), 3);
    }

    #[test]
    fn walks_start_and_stop_inside_segments_and_read_lone_records() {
        let t = log();
        // Segments 1..=3 and 4..=4, a lone record 5, a segment 6..=9.
        put(
            &t,
            u64_key(1),
            join_segment(&[rec(1), rec(2), rec(3)]).unwrap(),
        );
        put(&t, u64_key(4), join_segment(&[rec(4)]).unwrap());
        put(&t, u64_key(5), rec(5));
        put(
            &t,
            u64_key(6),
            join_segment(&[rec(6), rec(7), rec(8), rec(9)]).unwrap(),
        );
        let all: Vec<u64> = walk(&t, 1, u64::MAX).iter().map(|r| r.0).collect();
        assert_eq!(all, (1..=9).collect::<Vec<_>>());
        for (seq, bytes) in walk(&t, 1, 9) {
            assert_eq!(bytes, rec(seq));
        }
        for from in 1..=9 {
            for to in from..=9 {
                let got: Vec<u64> = walk(&t, from, to).iter().map(|r| r.0).collect();
                assert_eq!(got, (from..=to).collect::<Vec<_>>(), "{from}..={to}");
            }
        }
        assert!(walk(&t, 5, 4).is_empty());
        assert!(walk(&t, 10, 20).is_empty());
    }

    #[test]
    fn a_cut_segment_is_an_error_at_its_seq() {
        let t = log();
        let mut v = join_segment(&[rec(1), rec(2)]).unwrap();
        v.truncate(v.len() - 2);
        put(&t, u64_key(1), v.clone());
        let mut w = raw_records(&t.1, 1, 9);
        assert_eq!(w.next().unwrap().unwrap().seq, 1);
        let e = w.next().unwrap().unwrap_err();
        assert!(e.to_string().contains("seq 2"), "{e}");
        assert!(w.next().is_none());
        assert!(split_segment(&v).is_err());
    }

    proptest::proptest! {
        /// Whatever the cut into segments (and lone records among them), a walk from any seq to
        /// any seq yields exactly the seqs in between, each with its own record.
        #[test]
        fn walks_yield_exactly_the_range(
            cuts in proptest::collection::vec((1usize..12, proptest::bool::ANY), 1..12),
            from in 0u64..80,
            len in 0u64..80,
        ) {
            let t = log();
            let mut seq = 1u64;
            for (n, lone) in cuts {
                if lone {
                    put(&t, u64_key(seq), rec(seq));
                    seq += 1;
                } else {
                    let records: Vec<Vec<u8>> = (seq..seq + n as u64).map(rec).collect();
                    put(&t, u64_key(seq), join_segment(&records).unwrap());
                    seq += n as u64;
                }
            }
            let last = seq - 1;
            let to = from.saturating_add(len);
            let got = walk(&t, from, to);
            let want: Vec<u64> = (from.max(1)..=to.min(last)).collect();
            proptest::prop_assert_eq!(got.iter().map(|r| r.0).collect::<Vec<_>>(), want);
            for (seq, bytes) in got {
                proptest::prop_assert_eq!(bytes, rec(seq));
            }
        }
    }

    #[test]
    fn a_value_without_records_is_an_error() {
        for empty in [vec![], vec![SEGMENT_TAG]] {
            let t = log();
            put(&t, u64_key(1), join_segment(&[rec(1)]).unwrap());
            put(&t, u64_key(2), empty);
            let mut w = raw_records(&t.1, 1, 9);
            assert_eq!(w.next().unwrap().unwrap().seq, 1);
            let e = w.next().unwrap().unwrap_err();
            assert!(e.to_string().contains("seq 2 holds no record"), "{e}");
            assert!(w.next().is_none());
        }
    }

    #[test]
    fn a_gap_between_segments_shows_as_a_jump() {
        let t = log();
        put(&t, u64_key(1), join_segment(&[rec(1), rec(2)]).unwrap());
        put(&t, u64_key(5), join_segment(&[rec(5)]).unwrap());
        let seqs: Vec<u64> = walk(&t, 1, 9).iter().map(|r| r.0).collect();
        assert_eq!(seqs, vec![1, 2, 5]);
    }
}
