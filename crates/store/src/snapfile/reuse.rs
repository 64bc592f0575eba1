//! Copying the cold runs a previous snapshot file carries into the next one.
//!
//! Every build used to read the whole cold tier back through sled, and sled keeps the pages an
//! iteration reads in memory beyond its cache capacity: the live heap grew ~6-7 MB for good with
//! each finished 100,000-device job, until restart (BENCHMARKS.md, session 18). A finished run's
//! rows never change (the apply that ends the run writes them, retention removes them with their
//! job), so the runs the previous file carries whole are copied from it as raw frames, and sled
//! is read only between them. The previous file is this member's own (built from its sled or
//! installed into it), so the copied frames are the bytes a read of sled would have written.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};

use muster_domain::job::Job;
use muster_domain::State;
use muster_types::{JobId, RunId};

use super::{
    corrupt, split_entry, FrameReader, FrameWriter, FORMAT, MAGIC, TAG_END, TAG_ENTRY, TAG_JOB,
    TAG_TREE,
};
use crate::cold;
use crate::error::StoreError;

/// A previous snapshot file and where in it each cold run lies that the state being written
/// still has, unchanged.
#[derive(Debug)]
pub struct Previous {
    file: File,
    /// By the run's key prefix (`cold::run_key`), so in the tree's key order.
    spans: BTreeMap<Vec<u8>, Span>,
}

/// One run's entry frames: consecutive in the file.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u64,
    len: u64,
    frames: u64,
    /// Position chunks among them: a run carried whole has all of them.
    positions: u64,
}

/// Counts the bytes read, so a frame's offset in the file is known.
struct Counting<R> {
    inner: R,
    pos: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// The runs of one job whose rows are cold both in the file (`before`) and in the state being
/// written (`now`), with their row counts; none if the job is another one of the same id or
/// retention dropped its rows.
fn same_cold_runs<'a>(before: &'a Job, now: &'a Job) -> impl Iterator<Item = (RunId, u32)> + 'a {
    let same_job =
        before.created_at == now.created_at && !before.detail_expired && !now.detail_expired;
    before
        .runs
        .iter()
        .zip(&now.runs)
        .filter(move |_| same_job)
        .filter_map(|(b, n)| match (&b.cold, &n.cold) {
            (Some(cb), Some(cn))
                if b.number == n.number && b.created_at == n.created_at && cb.rows == cn.rows =>
            {
                Some((n.number, cn.rows))
            }
            _ => None,
        })
}

/// The first key after every key that starts with `prefix` (`None`: there is none).
fn after_prefix(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut k = prefix.to_vec();
    while let Some(last) = k.pop() {
        if last < u8::MAX {
            k.push(last + 1);
            return Some(k);
        }
    }
    None
}

impl Previous {
    /// Reads `file`, a snapshot file this member wrote or installed, for the cold runs of
    /// `state` it carries whole. A file of another format offers none.
    pub fn index(file: File, state: &State) -> Result<Self, StoreError> {
        let mut spans: BTreeMap<Vec<u8>, Span> = BTreeMap::new();
        let mut input = Counting {
            inner: BufReader::with_capacity(1 << 20, &file),
            pos: 0,
        };
        let mut start = [0u8; 12];
        input
            .read_exact(&mut start)
            .map_err(|_| corrupt("shorter than its magic and format"))?;
        if &start[..8] != MAGIC || start[8..] != FORMAT.to_be_bytes() {
            return Ok(Previous { file, spans });
        }
        // Position chunks each run must have, for the runs the state still has as they were.
        let mut wanted: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        let mut r = FrameReader {
            input,
            buf: Vec::new(),
            frames: 0,
        };
        let mut in_cold = false;
        let mut open: Option<(Vec<u8>, Span)> = None;
        let close = |open: &mut Option<(Vec<u8>, Span)>, spans: &mut BTreeMap<Vec<u8>, Span>| {
            if let Some((run, span)) = open.take() {
                // A run in two places (not in key order): copy nothing of it.
                spans
                    .entry(run)
                    .and_modify(|s| s.positions = u64::MAX)
                    .or_insert(span);
            }
        };
        loop {
            let at = r.input.pos;
            let Some(tag) = r.next()? else {
                return Err(corrupt("the file ends before its end frame"));
            };
            match tag {
                TAG_JOB => {
                    let (id, job): (JobId, Job) = r.decode("job")?;
                    if let Some(now) = state.jobs.get(&id) {
                        for (run, rows) in same_cold_runs(&job, now) {
                            wanted.insert(cold::run_key(&id, run), cold::position_chunks(rows));
                        }
                    }
                }
                TAG_TREE => {
                    close(&mut open, &mut spans);
                    in_cold = r.buf == cold::TREE.as_bytes();
                }
                TAG_ENTRY if in_cold => {
                    let (key, _) = split_entry(&r.buf)?;
                    let Some((run, position)) =
                        cold::key_run(key).filter(|(run, _)| wanted.contains_key(*run))
                    else {
                        close(&mut open, &mut spans);
                        continue;
                    };
                    if open.as_ref().is_none_or(|(k, _)| k.as_slice() != run) {
                        close(&mut open, &mut spans);
                        let span = Span {
                            start: at,
                            len: 0,
                            frames: 0,
                            positions: 0,
                        };
                        open = Some((run.to_vec(), span));
                    }
                    if let Some((_, span)) = &mut open {
                        span.len = r.input.pos - span.start;
                        span.frames += 1;
                        span.positions += u64::from(position);
                    }
                }
                TAG_END => break,
                _ => close(&mut open, &mut spans),
            }
        }
        close(&mut open, &mut spans);
        spans.retain(|run, span| wanted.get(run) == Some(&span.positions));
        Ok(Previous { file, spans })
    }

    /// How many runs a build copies from the file.
    pub fn runs(&self) -> usize {
        self.spans.len()
    }

    /// The cold tree's entries: the runs of [`Previous::index`] copied from the file, the rest
    /// read from `tree`, in key order.
    pub(super) fn write_cold<W: Write>(
        &self,
        w: &mut FrameWriter<W>,
        tree: &sled::Tree,
    ) -> Result<(), StoreError> {
        let mut from: Vec<u8> = Vec::new();
        for (run, span) in &self.spans {
            if from.as_slice() < run.as_slice() {
                w.entries(tree.range(from.as_slice()..run.as_slice()))?;
            }
            let mut f = &self.file;
            f.seek(SeekFrom::Start(span.start))?;
            let copied = std::io::copy(&mut f.take(span.len), &mut w.out)?;
            if copied != span.len {
                return Err(corrupt(
                    "the previous snapshot file shrank while it was copied",
                ));
            }
            w.frames += span.frames;
            w.bytes += span.len;
            match after_prefix(run) {
                Some(next) => from = next,
                None => return Ok(()),
            }
        }
        w.entries(tree.range(from.as_slice()..))
    }
}
