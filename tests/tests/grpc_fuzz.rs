//! Fuzz target (issue 18): arbitrary bytes as the request message of every muster gRPC method,
//! sent to a real node through its whole server stack (HTTP/2, the access gate, tonic's decode,
//! the handler). Each answer is a result or a caller's error (`INVALID_ARGUMENT`, `NOT_FOUND`,
//! ...) with a message, never `INTERNAL` / `UNKNOWN` (a panic in a handler shows as one) nor a
//! hang, and the node serves on afterwards.
//!
//! Inputs are half random bytes, half protobuf-shaped fields (random field numbers, wire types
//! and values, strings that look like ids), so most reach the handlers past the decoder. The
//! seed is fixed so CI runs the same cases; `MUSTER_FUZZ_CASES` runs more per method.

use std::time::Duration;

use muster_tests::{data_dir, Server};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use prost::bytes::{Buf, BufMut};
use prost::encoding::{skip_field, DecodeContext, WireType};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::Code;

/// A message that is exactly the bytes it holds: sent as any request type; answers are skipped.
#[derive(Debug, Clone, Default)]
struct Raw(Vec<u8>);

impl prost::Message for Raw {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// Membership changes wait for learners that never catch up (a minute): they are tested with
/// real members elsewhere; their messages decode as the others do.
const SKIPPED: &[&str] = &[
    "/muster.v1.ClusterService/AddLearner",
    "/muster.v1.ClusterService/Promote",
    "/muster.v1.ClusterService/Remove",
];

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[derive(Debug, Clone)]
enum Field {
    Varint(u64),
    Text(String),
    Bytes(Vec<u8>),
    Fixed32(u32),
    Fixed64(u64),
    Nested(Vec<(u32, Field)>),
}

fn encode(fields: &[(u32, Field)], out: &mut Vec<u8>) {
    for (number, field) in fields {
        let wire = match field {
            Field::Varint(_) => 0,
            Field::Fixed64(_) => 1,
            Field::Text(_) | Field::Bytes(_) | Field::Nested(_) => 2,
            Field::Fixed32(_) => 5,
        };
        varint(out, (u64::from(*number) << 3) | wire);
        match field {
            Field::Varint(v) => varint(out, *v),
            Field::Fixed64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Field::Fixed32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Field::Text(s) => {
                varint(out, s.len() as u64);
                out.extend_from_slice(s.as_bytes());
            }
            Field::Bytes(b) => {
                varint(out, b.len() as u64);
                out.extend_from_slice(b);
            }
            Field::Nested(inner) => {
                let mut body = Vec::new();
                encode(inner, &mut body);
                varint(out, body.len() as u64);
                out.extend_from_slice(&body);
            }
        }
    }
}

fn leaf() -> impl Strategy<Value = Field> {
    prop_oneof![
        prop_oneof![
            Just(0u64),
            Just(1),
            Just(u64::MAX),
            Just(1 << 63),
            any::<u64>()
        ]
        .prop_map(Field::Varint),
        prop_oneof![
            "[a-z0-9-]{0,12}",
            Just("..".to_string()),
            Just("{\"a\":1,\"a\":2}".to_string()),
            "\\PC{0,30}"
        ]
        .prop_map(Field::Text),
        proptest::collection::vec(any::<u8>(), 0..24).prop_map(Field::Bytes),
        any::<u32>().prop_map(Field::Fixed32),
        any::<u64>().prop_map(Field::Fixed64),
    ]
}

fn message() -> impl Strategy<Value = Vec<u8>> {
    let field = leaf().prop_recursive(2, 16, 6, |inner| {
        proptest::collection::vec((1u32..12, inner), 0..6).prop_map(Field::Nested)
    });
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..96),
        proptest::collection::vec((1u32..16, field), 0..8).prop_map(|fields| {
            let mut out = Vec::new();
            encode(&fields, &mut out);
            out
        }),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_request_bytes_get_an_answer_in_the_error_contract() {
    let cases: u32 = std::env::var("MUSTER_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(48);
    let dir = data_dir().unwrap();
    let server = Server::start(dir.path()).unwrap();
    server.wait_ready().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(server.channel().await.unwrap());
    let paths: Vec<&str> = muster_api::access::GRPC_ACCESS
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| p.starts_with("/muster.v1.") && !SKIPPED.contains(p))
        .collect();
    assert!(paths.len() > 30, "{paths:?}");

    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[18; 32]),
    );
    let strategy = message();
    let mut answered = 0u32;
    for &path in &paths {
        for _ in 0..cases {
            let bytes = strategy.new_tree(&mut runner).unwrap().current();
            grpc.ready().await.unwrap();
            let mut request = tonic::Request::new(Raw(bytes.clone()));
            request.set_timeout(Duration::from_secs(20));
            let codec = tonic_prost::ProstCodec::<Raw, Raw>::default();
            // Server streaming for every method: a unary answer is a stream of one; only the
            // answer's status matters, so a stream is dropped once it opened.
            let call = grpc.server_streaming(request, PathAndQuery::from_static(path), codec);
            let answer = tokio::time::timeout(Duration::from_secs(30), call)
                .await
                .unwrap_or_else(|_| panic!("{path} did not answer {bytes:?}"));
            if let Err(status) = answer {
                assert!(
                    !matches!(
                        status.code(),
                        Code::Internal | Code::Unknown | Code::DataLoss | Code::Unimplemented
                    ) && !status.message().is_empty(),
                    "{path} answered {status:?} to {bytes:?}"
                );
            }
            answered += 1;
        }
    }
    assert_eq!(answered, paths.len() as u32 * cases);

    // The node still serves.
    server.wait_ready().await.unwrap();
    let mut jobs = muster_proto::pb::job_service_client::JobServiceClient::new(
        server.channel().await.unwrap(),
    );
    jobs.list_jobs(muster_proto::pb::ListJobsRequest::default())
        .await
        .unwrap();
}
