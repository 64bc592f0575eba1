//! Golden files: the exact bytes of every sample command and event, as hex text in
//! `tests/golden/<sample>.hex`.
//!
//! Field numbers and types are a promise to every log already written. If this test fails, the
//! encoding of a sample changed: either a change to `events.proto` or to the conversions broke
//! compatibility (fix it), or a compatible addition changed a sample on purpose (regenerate). To
//! regenerate deliberately, delete the affected files and run
//! `MUSTER_UPDATE_GOLDEN=1 cargo test -p muster-proto --test golden`. Existing files are never
//! overwritten, so the old bytes stay authoritative unless someone removes them by hand.

mod samples;

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::fs;
use std::path::{Path, PathBuf};

use muster_domain::Event;
use muster_proto::{
    decode_command, decode_event, encode_command, encode_event, EventRecordBytes, ProtoError,
};
use prost::Message;

const UPDATE_VAR: &str = "MUSTER_UPDATE_GOLDEN";

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn updating() -> bool {
    std::env::var(UPDATE_VAR).is_ok_and(|v| v == "1")
}

/// Lower-case hex, 64 characters (32 bytes) a line, so a diff shows where the bytes differ.
fn to_hex(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(32) {
        for b in chunk {
            out.push_str(&format!("{b:02x}"));
        }
        out.push('\n');
    }
    out
}

fn from_hex(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    digits
        .chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).map_err(|e| e.to_string())?;
            u8::from_str_radix(s, 16).map_err(|e| format!("{s:?}: {e}"))
        })
        .collect()
}

/// Checks one sample against its file and returns what went wrong, if anything.
fn check<T: PartialEq + Debug>(
    name: &str,
    value: &T,
    encoded: Vec<u8>,
    decode: fn(&[u8]) -> Result<T, ProtoError>,
) -> Option<String> {
    let path = golden_dir().join(format!("{name}.hex"));
    let regenerate = format!(
        "If the change is a deliberate, compatible addition, delete {} and run \
         `{UPDATE_VAR}=1 cargo test -p muster-proto --test golden` to write it again.",
        path.display()
    );
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(_) if updating() => {
            return fs::write(&path, to_hex(&encoded))
                .err()
                .map(|e| format!("{name}: cannot write {}: {e}", path.display()));
        }
        Err(e) => {
            return Some(format!(
                "{name}: golden file {} is missing ({e}). Every sample needs one; \
                 run `{UPDATE_VAR}=1 cargo test -p muster-proto --test golden` to write the \
                 missing files, and commit them.",
                path.display()
            ))
        }
    };
    let stored = match from_hex(&text) {
        Ok(bytes) => bytes,
        Err(e) => return Some(format!("{name}: {} is not hex: {e}", path.display())),
    };
    let mut problems = Vec::new();
    if stored != encoded {
        problems.push(format!(
            "the encoding of {name} changed incompatibly: the bytes differ from {}.\n\
             stored:\n{}now:\n{}{regenerate}",
            path.display(),
            to_hex(&stored),
            to_hex(&encoded)
        ));
    }
    match decode(&stored) {
        Ok(decoded) if &decoded == value => {}
        Ok(decoded) => problems.push(format!(
            "the stored bytes of {name} no longer decode to the sample: a field was \
             renumbered, retyped or reinterpreted.\nexpected: {value:?}\ndecoded:  {decoded:?}\n\
             {regenerate}"
        )),
        Err(e) => problems.push(format!(
            "the stored bytes of {name} no longer decode: {e}. Old logs would fail the same \
             way.\n{regenerate}"
        )),
    }
    (!problems.is_empty()).then(|| problems.join("\n"))
}

#[test]
fn encodings_match_the_golden_files() {
    let mut problems = Vec::new();
    let mut names = BTreeSet::new();
    for (name, event) in samples::events() {
        names.insert(format!("{name}.hex"));
        problems.extend(check(name, &event, encode_event(&event), decode_event));
    }
    for (name, command) in samples::commands() {
        names.insert(format!("{name}.hex"));
        problems.extend(check(
            name,
            &command,
            encode_command(&command),
            decode_command,
        ));
    }
    for (name, record) in record_samples() {
        names.insert(format!("{name}.hex"));
        problems.extend(check(name, &record, encode_record(&record), decode_record));
    }

    // A file without a sample means a sample was dropped; its bytes would go unchecked.
    if let Ok(entries) = fs::read_dir(golden_dir()) {
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if file.ends_with(".hex") && !names.contains(&file) {
                problems.push(format!(
                    "{file} has no sample in tests/samples/mod.rs; keep the sample (old logs \
                     still hold such bytes) or delete the file on purpose"
                ));
            }
        }
    }

    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

#[test]
fn hex_helpers_round_trip() {
    let bytes: Vec<u8> = (0..=255).collect();
    assert_eq!(from_hex(&to_hex(&bytes)).unwrap(), bytes);
    assert!(from_hex("abc").is_err());
    assert!(from_hex("zz").is_err());
}

/// A record's fields: seq, event, hash (field 3, the hash chain), principal (field 4).
type Record = (u64, Event, Vec<u8>, String);

/// Event log records. `event_record` has no principal: its file holds the bytes every release
/// before field 4 wrote (and a `system` command's record still is), so it also proves that
/// such a record still decodes. `event_record_principal` carries one.
#[allow(clippy::unwrap_used)] // test helper: the sample exists
fn record_samples() -> Vec<(&'static str, Record)> {
    let (_, event) = samples::events()
        .into_iter()
        .find(|(name, _)| *name == "event_job_completed")
        .unwrap();
    let hash: Vec<u8> = (0u8..32).collect();
    vec![
        (
            "event_record",
            (42, event.clone(), hash.clone(), String::new()),
        ),
        (
            "event_record_principal",
            (43, event, hash, "policy:iothubowner".into()),
        ),
    ]
}

fn encode_record((seq, event, hash, principal): &Record) -> Vec<u8> {
    EventRecordBytes {
        seq: *seq,
        event: encode_event(event),
        hash: hash.clone(),
        principal: principal.clone(),
    }
    .encode_to_vec()
}

fn decode_record(bytes: &[u8]) -> Result<Record, ProtoError> {
    let record = EventRecordBytes::decode(bytes)?;
    Ok((
        record.seq,
        record.decode_event()?,
        record.hash,
        record.principal,
    ))
}

#[test]
fn event_record_bytes_is_the_generated_event_record() {
    for (_, sample) in record_samples() {
        let bytes = encode_record(&sample);
        let generated = muster_proto::pb::EventRecord::decode(bytes.as_slice()).unwrap();
        assert_eq!(generated.seq, sample.0);
        assert_eq!(generated.hash, sample.2);
        assert_eq!(generated.principal, sample.3);
        assert_eq!(generated.encode_to_vec(), bytes);
    }
}

/// The bytes of an `EventRecord` as written before the `principal` field existed (the stored
/// `event_record.hex`, checked byte for byte above) decode with an empty principal, which
/// readers show as `system`; and adding a principal only appends field 4, so the old fields'
/// bytes are unchanged.
#[test]
fn a_record_without_a_principal_still_decodes() {
    let old =
        from_hex(&fs::read_to_string(golden_dir().join("event_record.hex")).unwrap()).unwrap();
    let (seq, _, hash, principal) = decode_record(&old).unwrap();
    assert_eq!((seq, hash.len(), principal.as_str()), (42, 32, ""));
    let with = EventRecordBytes {
        principal: "anonymous".into(),
        ..EventRecordBytes::decode(&old).unwrap()
    }
    .encode_to_vec();
    assert_eq!(&with[..old.len()], old.as_slice());
    assert_eq!(&with[old.len()..], b"\x22\x09anonymous");
}
