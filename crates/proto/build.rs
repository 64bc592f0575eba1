//! Compiles the `.proto` files in `proto/muster/v1` into Rust with protox, a protobuf compiler
//! written in Rust, so building muster needs no system `protoc`.
//!
//! protox parses the files into a `FileDescriptorSet`; tonic-prost-build turns that into prost
//! messages and, for files that declare a `service`, tonic clients and servers. A new `.proto`
//! file is one more line in `PROTO_FILES`. `jobs.proto` and `devices.proto` declare services, so
//! the crate depends on `tonic` and `tonic-prost`.
//!
//! The same descriptors, encoded, are written to `OUT_DIR/muster_descriptor.bin`: the gRPC
//! reflection service serves them, so `grpcurl` works without a copy of the `.proto` files.

use std::path::PathBuf;

/// The files to compile, relative to the proto root. Imports between them resolve from that root
/// (`import "muster/v1/events.proto";`).
const PROTO_FILES: &[&str] = &[
    "muster/v1/events.proto",
    "muster/v1/jobs.proto",
    "muster/v1/devices.proto",
    "muster/v1/cluster.proto",
    "muster/v1/audit.proto",
    "muster/v1/auth.proto",
    "muster/v1/schedules.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files: Vec<PathBuf> = PROTO_FILES.iter().map(|f| root.join(f)).collect();

    // The whole folder, so that edits of imported files and new files are noticed too.
    println!("cargo:rerun-if-changed={}", root.display());

    let descriptors = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("muster_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
