//! Traces exported over OTLP/HTTP: a three-node cluster started with `--otlp-endpoint` pointing
//! at an OTLP receiver in this test (axum, decoding the protobuf with `opentelemetry-proto`), a
//! one-device `muster devsim` fleet on Mosquitto (`MUSTER_TEST_MQTT_URL`), and a job created
//! through REST on a follower. One trace must hold the REST request, the forwarding to the
//! leader, the Raft commit and apply there, the MQTT publish to the device, its answer and the
//! proposal that recorded it; and since the request carries a W3C `traceparent`, that trace is
//! the caller's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use muster_tests::{wait_for, Devsim, TestCluster};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde_json::json;

const V: &str = "api-version=2022-07-31";

#[derive(Debug, Clone)]
struct Span {
    trace: Vec<u8>,
    id: Vec<u8>,
    parent: Vec<u8>,
    name: String,
    /// `service.instance.id`: the node that exported it.
    node: String,
}

/// An OTLP/HTTP receiver: every span posted to `/v1/traces`.
async fn receiver() -> (String, Arc<Mutex<Vec<Span>>>) {
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let kept = Arc::clone(&spans);
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let kept = Arc::clone(&kept);
            async move {
                let req = ExportTraceServiceRequest::decode(body).unwrap();
                let mut out = kept.lock().unwrap();
                for rs in req.resource_spans {
                    let node = rs
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|a| a.key == "service.instance.id")
                        .and_then(|a| a.value.as_ref())
                        .map(|v| format!("{:?}", v.value))
                        .unwrap_or_default();
                    for ss in rs.scope_spans {
                        for s in ss.spans {
                            out.push(Span {
                                trace: s.trace_id,
                                id: s.span_id,
                                parent: s.parent_span_id,
                                name: s.name,
                                node: node.clone(),
                            });
                        }
                    }
                }
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), spans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_rest_forwarding_raft_mqtt_and_the_answer() {
    // Export every 100 ms instead of every 5 s (the SDK reads this from the environment).
    std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "100");
    let (endpoint, spans) = receiver().await;
    let url = muster_tests::mqtt_url();
    let cluster =
        TestCluster::start(3, &["--mqtt-url", &url, "--otlp-endpoint", &endpoint]).unwrap();
    let leader = cluster.leader().await.unwrap();
    let follower = (leader + 1) % 3;
    let http = cluster.http_client().unwrap();
    let rest = cluster.nodes[follower].rest.clone();
    for i in 0..3 {
        cluster.nodes[i].wait_ready().await.unwrap();
    }

    let prefix = format!("tr-{}", std::process::id());
    let devsim = Devsim::start(
        cluster.dir(0),
        &[
            "--broker",
            &url,
            "--devices",
            "1",
            "--prefix",
            &prefix,
            "--register",
            &cluster.nodes[leader].grpc,
        ],
    );
    assert!(devsim.first_line().starts_with("devsim ready"));
    let r = http
        .put(format!("{rest}/api/deviceGroups/{prefix}?{V}"))
        .json(&json!({"displayName": "traced", "filter": format!("SELECT * FROM devices WHERE tags.devsim = '{prefix}'")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    // The caller's own trace and span: the REST span must continue them.
    let caller_trace: Vec<u8> = (1..=16).collect();
    let caller_span: Vec<u8> = vec![0xab; 8];
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let r = http
        .put(format!("{rest}/api/jobs/traced-job?{V}"))
        .header(
            "traceparent",
            format!("00-{}-{}-01", hex(&caller_trace), hex(&caller_span)),
        )
        .json(&json!({
            "displayName": "traced",
            "group": prefix,
            "data": [{"type": "CommandJobData", "target": "dtmi:muster:simulated;1", "path": "reboot", "value": {}}]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());

    // The trace the job's creation started, as far as it has been exported.
    let trace_of_job = || {
        let all = spans.lock().unwrap().clone();
        let root = all
            .iter()
            .find(|s| s.name == "PUT /api/jobs/{id}" && s.trace == caller_trace)
            .cloned();
        let trace: Vec<Span> = match &root {
            Some(r) => all.into_iter().filter(|s| s.trace == r.trace).collect(),
            None => Vec::new(),
        };
        (root, trace)
    };
    let wanted = [
        "PUT /api/jobs/{id}",
        "cluster.write",
        "cluster.forward",
        "leader.write",
        "raft.commit_apply",
        "raft.apply",
        "dispatch.mark_dispatched",
        "mqtt.publish",
        "mqtt.answer",
        "dispatch.record_results",
    ];
    let waited = wait_for("the job's whole trace exported", || {
        let (_, trace) = trace_of_job();
        let names: BTreeSet<String> = trace.iter().map(|s| s.name.clone()).collect();
        let done = wanted.iter().all(|w| names.contains(*w));
        async move { done }
    })
    .await;
    let (root, trace) = trace_of_job();
    if let Err(e) = waited {
        let names: Vec<(String, String)> = trace
            .iter()
            .map(|s| (s.name.clone(), s.node.clone()))
            .collect();
        panic!(
            "{e}: trace has {names:?}\nall spans: {:?}\n{}",
            spans
                .lock()
                .unwrap()
                .iter()
                .map(|s| &s.name)
                .collect::<Vec<_>>(),
            cluster.logs()
        );
    }
    let root = root.unwrap();
    assert_eq!(
        root.parent, caller_span,
        "the REST span continues the caller's span"
    );

    // Parent links: every span but the root has its parent in the same trace, and the hops
    // chain as the request travelled.
    let by_id: BTreeMap<&[u8], &Span> = trace.iter().map(|s| (s.id.as_slice(), s)).collect();
    for s in &trace {
        if s.id != root.id {
            assert!(
                by_id.contains_key(s.parent.as_slice()),
                "{} has a parent outside the trace",
                s.name
            );
        }
    }
    let parent_name = |name: &str| {
        let s = trace.iter().find(|s| s.name == name).unwrap();
        by_id[s.parent.as_slice()].name.clone()
    };
    assert_eq!(parent_name("cluster.write"), "PUT /api/jobs/{id}");
    assert_eq!(parent_name("cluster.forward"), "cluster.write");
    assert_eq!(parent_name("leader.write"), "cluster.forward");
    // Every proposal on the way (the creation, then the dispatcher's) is traced through its
    // apply on the leader; the follower's own attempt was answered "not leader".
    let parents_of = |name: &str| -> BTreeSet<String> {
        trace
            .iter()
            .filter(|s| s.name == name)
            .map(|s| by_id[s.parent.as_slice()].name.clone())
            .collect()
    };
    assert!(parents_of("raft.commit_apply").contains("leader.write"));
    assert_eq!(
        parents_of("raft.apply"),
        BTreeSet::from(["raft.commit_apply".to_string()])
    );
    assert_eq!(parent_name("mqtt.publish"), "leader.write");
    assert_eq!(parent_name("mqtt.answer"), "leader.write");
    // The REST request was served by the follower, the job carried out by the leader.
    let node_of = |name: &str| trace.iter().find(|s| s.name == name).unwrap().node.clone();
    assert_ne!(node_of("PUT /api/jobs/{id}"), node_of("leader.write"));
    assert_eq!(node_of("leader.write"), node_of("mqtt.publish"));
    drop(devsim);
}
