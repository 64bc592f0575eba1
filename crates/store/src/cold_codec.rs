//! The binary form of cold chunks (see [`crate::cold`]).
//!
//! Until session 15 both kinds of chunk were serde_json, and an id chunk carried whole rows: a
//! million-device run wrote ~500 MB of JSON through sled at its end, the node's memory peak.
//! Now a row is stored once, in its position chunk, in a few dozen bytes; an id chunk holds
//! only `(position, id)` pairs. A chunk's first byte says which form it is: JSON always starts
//! with `[`, so chunks older releases wrote still read.
//!
//! | chunk | bytes |
//! | --- | --- |
//! | position | `1`, count (varint), count × u32 LE offset of each row after the table, rows |
//! | id | `2`, count (varint), count × (position varint, id length varint, id) |
//!
//! A row: id length and id, batch, status (one byte), attempts, a presence byte (bit 0
//! `ready_since`, 1 `dispatched_at`, 2 `finished_at`, 3 `last_error`, 4 `response`), the
//! present times (the first as zigzag millis, each next as a zigzag delta from the one before),
//! the failure (kind byte, then its status or message), the response (zigzag status, payload
//! length, payload text). Integers are LEB128 varints unless said otherwise. The offset table
//! lets a reader decode one row of a chunk without the others, which reading by id needs.

use muster_domain::{DeviceRun, DeviceStatus, FailureReason, JsonText, MethodResponse};
use muster_types::{DeviceId, Timestamp};

use crate::codec::{from_json, read_varint, write_varint};
use crate::StoreError;

const ROWS: u8 = 1;
const INDEX: u8 = 2;
const JSON: u8 = b'[';
const WHAT: &str = "cold rows";

const HAS_READY: u8 = 1;
const HAS_DISPATCHED: u8 = 1 << 1;
const HAS_FINISHED: u8 = 1 << 2;
const HAS_ERROR: u8 = 1 << 3;
const HAS_RESPONSE: u8 = 1 << 4;

/// A position chunk's bytes for `rows`, in run order.
pub(crate) fn encode_rows<'a>(rows: impl IntoIterator<Item = &'a DeviceRun>) -> Vec<u8> {
    let mut body = Vec::new();
    let mut offsets = Vec::new();
    for row in rows {
        offsets.push(body.len() as u32);
        put_row(&mut body, row);
    }
    let n = offsets.len();
    let mut out = Vec::with_capacity(1 + 5 + 4 * n + body.len());
    out.push(ROWS);
    write_varint(&mut out, n as u64);
    for o in offsets {
        out.extend_from_slice(&o.to_le_bytes());
    }
    out.extend_from_slice(&body);
    out
}

/// An id chunk's bytes for `entries`, `(position, id)` in id order.
pub(crate) fn encode_index<'a>(
    entries: impl ExactSizeIterator<Item = (u32, &'a DeviceId)>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 5 + entries.len() * 24);
    out.push(INDEX);
    write_varint(&mut out, entries.len() as u64);
    for (position, id) in entries {
        write_varint(&mut out, u64::from(position));
        put_str(&mut out, id.as_str());
    }
    out
}

/// What an id chunk holds: whole rows (JSON, as older releases wrote it) or positions.
pub(crate) enum IdChunk {
    Rows(Vec<(u32, DeviceRun)>),
    Index(Vec<(u32, DeviceId)>),
}

impl IdChunk {
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        match bytes.first() {
            Some(&JSON) => Ok(IdChunk::Rows(from_json(WHAT, bytes)?)),
            Some(&INDEX) => {
                let mut r = Reader::new(&bytes[1..]);
                let n = r.len()?;
                let mut out = Vec::with_capacity(n.min(4096));
                for _ in 0..n {
                    let position = r.u32()?;
                    out.push((position, r.id()?));
                }
                r.end()?;
                Ok(IdChunk::Index(out))
            }
            other => Err(unknown(other)),
        }
    }
}

/// Every row of a position chunk, in order.
pub(crate) fn decode_rows(bytes: &[u8]) -> Result<Vec<DeviceRun>, StoreError> {
    match bytes.first() {
        Some(&JSON) => from_json(WHAT, bytes),
        Some(&ROWS) => {
            let table = Table::new(bytes)?;
            (0..table.count).map(|i| table.row(i)).collect()
        }
        other => Err(unknown(other)),
    }
}

/// Row `i` of a position chunk, `None` past its end; only that row is decoded.
pub(crate) fn row_at(bytes: &[u8], i: usize) -> Result<Option<DeviceRun>, StoreError> {
    match bytes.first() {
        Some(&JSON) => Ok(decode_rows(bytes)?.into_iter().nth(i)),
        Some(&ROWS) => {
            let table = Table::new(bytes)?;
            if i >= table.count {
                return Ok(None);
            }
            table.row(i).map(Some)
        }
        other => Err(unknown(other)),
    }
}

fn unknown(first: Option<&u8>) -> StoreError {
    StoreError::corrupt(
        WHAT,
        match first {
            Some(b) => format!("a chunk of unknown form {b}"),
            None => "an empty chunk".to_string(),
        },
    )
}

/// A binary position chunk's offset table.
struct Table<'a> {
    count: usize,
    offsets: &'a [u8],
    body: &'a [u8],
}

impl<'a> Table<'a> {
    fn new(bytes: &'a [u8]) -> Result<Self, StoreError> {
        let mut r = Reader::new(&bytes[1..]);
        let count = r.len()?;
        let rest = r.rest();
        let table_len = count
            .checked_mul(4)
            .filter(|&l| l <= rest.len())
            .ok_or_else(|| corrupt(format!("{count} rows but {} bytes", rest.len())))?;
        let (offsets, body) = rest.split_at(table_len);
        Ok(Table {
            count,
            offsets,
            body,
        })
    }

    fn row(&self, i: usize) -> Result<DeviceRun, StoreError> {
        let at = self
            .offsets
            .get(4 * i..4 * i + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(|b| u32::from_le_bytes(b) as usize)
            .ok_or_else(|| corrupt(format!("no offset for row {i}")))?;
        let bytes = self
            .body
            .get(at..)
            .ok_or_else(|| corrupt(format!("row {i} starts past the chunk's end")))?;
        Reader::new(bytes).row()
    }
}

fn corrupt(detail: String) -> StoreError {
    StoreError::corrupt(WHAT, detail)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    write_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn status_byte(s: DeviceStatus) -> u8 {
    match s {
        DeviceStatus::Pending => 0,
        DeviceStatus::Running => 1,
        DeviceStatus::Succeeded => 2,
        DeviceStatus::Failed => 3,
        DeviceStatus::TimedOut => 4,
        DeviceStatus::Cancelled => 5,
    }
}

fn put_row(out: &mut Vec<u8>, row: &DeviceRun) {
    put_str(out, row.device.as_str());
    write_varint(out, u64::from(row.batch));
    out.push(status_byte(row.status));
    write_varint(out, u64::from(row.attempts));
    let mut flags = 0;
    for (bit, present) in [
        (HAS_READY, row.ready_since.is_some()),
        (HAS_DISPATCHED, row.dispatched_at.is_some()),
        (HAS_FINISHED, row.finished_at.is_some()),
        (HAS_ERROR, row.last_error.is_some()),
        (HAS_RESPONSE, row.response.is_some()),
    ] {
        if present {
            flags |= bit;
        }
    }
    out.push(flags);
    let mut prev = 0i64;
    for t in [row.ready_since, row.dispatched_at, row.finished_at]
        .into_iter()
        .flatten()
    {
        write_varint(out, zigzag(t.0.wrapping_sub(prev)));
        prev = t.0;
    }
    if let Some(e) = &row.last_error {
        match e {
            FailureReason::DeviceError { status } => {
                out.push(0);
                write_varint(out, zigzag(i64::from(*status)));
            }
            FailureReason::Timeout => out.push(1),
            FailureReason::NotConnected => out.push(2),
            FailureReason::DeviceNotFound => out.push(3),
            FailureReason::DeviceDisabled => out.push(4),
            FailureReason::DispatchFailed { message } => {
                out.push(5);
                put_str(out, message);
            }
        }
    }
    if let Some(r) = &row.response {
        write_varint(out, zigzag(i64::from(r.status)));
        put_str(out, r.payload.as_str());
    }
}

/// Reads a chunk's fields; every read checks the bytes are there.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    fn rest(self) -> &'a [u8] {
        self.bytes
    }

    fn end(&self) -> Result<(), StoreError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(corrupt(format!(
                "{} bytes after the last entry",
                self.bytes.len()
            )))
        }
    }

    fn varint(&mut self) -> Result<u64, StoreError> {
        let (v, used) =
            read_varint(self.bytes).ok_or_else(|| corrupt("a number is cut short".into()))?;
        self.bytes = &self.bytes[used..];
        Ok(v)
    }

    fn u32(&mut self) -> Result<u32, StoreError> {
        let v = self.varint()?;
        u32::try_from(v).map_err(|_| corrupt(format!("{v} is out of range")))
    }

    fn i32(&mut self) -> Result<i32, StoreError> {
        let v = unzigzag(self.varint()?);
        i32::try_from(v).map_err(|_| corrupt(format!("status {v} is out of range")))
    }

    fn len(&mut self) -> Result<usize, StoreError> {
        let n = self.varint()?;
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.bytes.len())
            .ok_or_else(|| corrupt(format!("a length of {n} past the chunk's end")))
    }

    fn byte(&mut self) -> Result<u8, StoreError> {
        let (&b, rest) = self
            .bytes
            .split_first()
            .ok_or_else(|| corrupt("a row is cut short".into()))?;
        self.bytes = rest;
        Ok(b)
    }

    fn str(&mut self) -> Result<&'a str, StoreError> {
        let n = self.len()?;
        let (s, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        std::str::from_utf8(s).map_err(|e| corrupt(format!("text that is not UTF-8: {e}")))
    }

    fn id(&mut self) -> Result<DeviceId, StoreError> {
        DeviceId::new(self.str()?).map_err(|e| corrupt(e.to_string()))
    }

    fn row(&mut self) -> Result<DeviceRun, StoreError> {
        let device = self.id()?;
        let batch = self.u32()?;
        let status = match self.byte()? {
            0 => DeviceStatus::Pending,
            1 => DeviceStatus::Running,
            2 => DeviceStatus::Succeeded,
            3 => DeviceStatus::Failed,
            4 => DeviceStatus::TimedOut,
            5 => DeviceStatus::Cancelled,
            b => return Err(corrupt(format!("device status {b}"))),
        };
        let attempts = self.u32()?;
        let flags = self.byte()?;
        let mut prev = 0i64;
        let mut time = |r: &mut Self, bit: u8| -> Result<Option<Timestamp>, StoreError> {
            if flags & bit == 0 {
                return Ok(None);
            }
            prev = prev.wrapping_add(unzigzag(r.varint()?));
            Ok(Some(Timestamp(prev)))
        };
        let ready_since = time(self, HAS_READY)?;
        let dispatched_at = time(self, HAS_DISPATCHED)?;
        let finished_at = time(self, HAS_FINISHED)?;
        let last_error = if flags & HAS_ERROR == 0 {
            None
        } else {
            Some(match self.byte()? {
                0 => FailureReason::DeviceError {
                    status: self.i32()?,
                },
                1 => FailureReason::Timeout,
                2 => FailureReason::NotConnected,
                3 => FailureReason::DeviceNotFound,
                4 => FailureReason::DeviceDisabled,
                5 => FailureReason::DispatchFailed {
                    message: self.str()?.to_string(),
                },
                b => return Err(corrupt(format!("failure kind {b}"))),
            })
        };
        let response = if flags & HAS_RESPONSE == 0 {
            None
        } else {
            let status = self.i32()?;
            let payload = JsonText::parse(self.str()?)
                .map_err(|e| corrupt(format!("a response that is not JSON: {e}")))?;
            Some(MethodResponse { status, payload })
        };
        Ok(DeviceRun {
            device,
            batch,
            status,
            attempts,
            ready_since,
            dispatched_at,
            finished_at,
            last_error,
            response,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_time() -> impl Strategy<Value = Option<Timestamp>> {
        proptest::option::of(any::<i64>().prop_map(Timestamp))
    }

    fn arb_error() -> impl Strategy<Value = Option<FailureReason>> {
        proptest::option::of(prop_oneof![
            any::<i32>().prop_map(|status| FailureReason::DeviceError { status }),
            Just(FailureReason::Timeout),
            Just(FailureReason::NotConnected),
            Just(FailureReason::DeviceNotFound),
            Just(FailureReason::DeviceDisabled),
            ".{0,40}".prop_map(|message| FailureReason::DispatchFailed { message }),
        ])
    }

    fn arb_row() -> impl Strategy<Value = DeviceRun> {
        (
            "[a-z0-9][a-z0-9-]{0,29}",
            any::<u32>(),
            0u8..6,
            any::<u32>(),
            (arb_time(), arb_time(), arb_time()),
            arb_error(),
            proptest::option::of((any::<i32>(), any::<i64>(), ".{0,20}")),
        )
            .prop_map(
                |(id, batch, status, attempts, times, last_error, response)| {
                    let response = response.map(|(status, n, s)| MethodResponse {
                        status,
                        payload: JsonText::from_value(&serde_json::json!({ "n": n, "s": s })),
                    });
                    DeviceRun {
                        device: DeviceId::new(id).unwrap(),
                        batch,
                        status: STATUSES[usize::from(status)],
                        attempts,
                        ready_since: times.0,
                        dispatched_at: times.1,
                        finished_at: times.2,
                        last_error,
                        response,
                    }
                },
            )
    }

    const STATUSES: [DeviceStatus; 6] = [
        DeviceStatus::Pending,
        DeviceStatus::Running,
        DeviceStatus::Succeeded,
        DeviceStatus::Failed,
        DeviceStatus::TimedOut,
        DeviceStatus::Cancelled,
    ];

    proptest! {
        /// Every row reads back as written, whole chunk or one row at a time, and an index
        /// reads back its pairs.
        #[test]
        fn chunks_round_trip(rows in proptest::collection::vec(arb_row(), 0..40)) {
            let bytes = encode_rows(&rows);
            prop_assert_eq!(&decode_rows(&bytes).unwrap(), &rows);
            for (i, row) in rows.iter().enumerate() {
                prop_assert_eq!(row_at(&bytes, i).unwrap(), Some(row.clone()));
            }
            prop_assert_eq!(row_at(&bytes, rows.len()).unwrap(), None);
            let index = encode_index(rows.iter().enumerate().map(|(p, r)| (p as u32, &r.device)));
            let IdChunk::Index(pairs) = IdChunk::decode(&index).unwrap() else {
                panic!("an index chunk read as rows");
            };
            let want: Vec<(u32, DeviceId)> =
                rows.iter().enumerate().map(|(p, r)| (p as u32, r.device.clone())).collect();
            prop_assert_eq!(pairs, want);
        }

        /// Bytes that are not a chunk are an error, never a panic.
        #[test]
        fn any_bytes_decode_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_rows(&bytes);
            let _ = row_at(&bytes, 3);
            let _ = IdChunk::decode(&bytes);
        }

        /// A chunk cut anywhere is an error or fewer rows, never a panic or a wrong row.
        #[test]
        fn a_cut_chunk_is_refused(rows in proptest::collection::vec(arb_row(), 1..10), cut in 0usize..1000) {
            let bytes = encode_rows(&rows);
            let cut = cut % bytes.len();
            if let Ok(read) = decode_rows(&bytes[..cut]) {
                prop_assert!(read.is_empty() || read == rows[..read.len()].to_vec());
            }
        }
    }

    /// A row as the load bench finishes it is a few dozen bytes, not the ~250 of its JSON.
    #[test]
    fn a_succeeded_row_is_small() {
        let row = DeviceRun {
            device: DeviceId::new("sim-0000123").unwrap(),
            batch: 0,
            status: DeviceStatus::Succeeded,
            attempts: 1,
            ready_since: Some(Timestamp(1_796_000_000_000)),
            dispatched_at: Some(Timestamp(1_796_000_000_040)),
            finished_at: Some(Timestamp(1_796_000_000_095)),
            last_error: None,
            response: Some(MethodResponse {
                status: 200,
                payload: JsonText::parse(r#"{"ok":true}"#).unwrap(),
            }),
        };
        let one = encode_rows([&row]).len();
        assert!(one < 50, "{one} bytes");
        let json = serde_json::to_vec(&[&row]).unwrap().len();
        assert!(json > 4 * one, "json {json} bytes vs {one}");
    }

    /// Chunks in the JSON form older releases wrote still read.
    #[test]
    fn json_chunks_still_read() {
        let row = DeviceRun {
            device: DeviceId::new("d1").unwrap(),
            batch: 2,
            status: DeviceStatus::Failed,
            attempts: 3,
            ready_since: None,
            dispatched_at: None,
            finished_at: Some(Timestamp(5)),
            last_error: Some(FailureReason::Timeout),
            response: None,
        };
        let rows = serde_json::to_vec(&[&row]).unwrap();
        assert_eq!(decode_rows(&rows).unwrap(), vec![row.clone()]);
        assert_eq!(row_at(&rows, 0).unwrap(), Some(row.clone()));
        let ids = serde_json::to_vec(&[(7u32, &row)]).unwrap();
        let IdChunk::Rows(read) = IdChunk::decode(&ids).unwrap() else {
            panic!("a JSON id chunk read as an index");
        };
        assert_eq!(read, vec![(7, row)]);
    }
}
