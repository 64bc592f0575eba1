//! Following the event log online: `muster.v1.EventService.Subscribe` from seq 0 and from the
//! middle, with filters, live after the catch-up, and across a leader change in a three-node
//! cluster (directly on a follower, and through `muster events follow`, which moves to another
//! node when its node dies); `GET /api/jobs/{id}/events`; and `muster job devices --output csv`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use muster_proto::pb;
use muster_proto::pb::event_service_client::EventServiceClient;
use muster_proto::pb::job_service_client::JobServiceClient;
use muster_tests::{
    admin_token, data_dir, wait_for, with_credential, Server, TestCluster, PATIENCE,
};
use prost::Message;
use serde_json::Value;
use tonic::transport::Channel;
use tonic::Code;

const CENTRAL: &str = "api-version=2022-07-31";

async fn channel(server: &Server) -> muster_tests::AuthChannel {
    muster_tests::leader_channel(server).await.unwrap()
}

/// A job that starts in 2099: it writes JobCreated and JobScheduled, then nothing by itself.
fn later(id: &str) -> pb::CreateJobRequest {
    pb::CreateJobRequest {
        job_id: id.into(),
        spec: Some(pb::JobSpec {
            target: Some(pb::Target {
                selector: Some(pb::target::Selector::Devices(pb::DeviceList {
                    device_ids: vec!["ev-dev".into()],
                })),
                continuous: false,
            }),
            operations: vec![pb::Operation {
                kind: Some(pb::operation::Kind::InvokeMethod(pb::MethodCall {
                    name: "reboot".into(),
                    payload_json: "{}".into(),
                    response_timeout_secs: 30,
                    connect_timeout_secs: 0,
                })),
            }],
            schedule: Some(pb::Schedule {
                start_at_ms: Some(4_070_908_800_000),
                max_execution_secs: None,
            }),
            ..Default::default()
        }),
    }
}

/// Creates a job on whichever node `endpoint` is, retrying while the cluster has no leader. A
/// retry after an answer that was lost may find the job there already, which is success too.
async fn create_job(endpoint: &str, id: &str) {
    wait_for(&format!("job {id} to be created"), || async move {
        let Ok(mut jobs) = JobServiceClient::connect(endpoint.to_string()).await else {
            return false;
        };
        match jobs.create_job(later(id)).await {
            Ok(_) => true,
            Err(s) => s.code() == Code::AlreadyExists,
        }
    })
    .await
    .unwrap();
}

/// Everything one subscription delivered, collected by a background task.
#[derive(Clone, Default)]
struct Collected(Arc<Mutex<Vec<pb::StreamedEvent>>>);

impl Collected {
    fn start(mut stream: tonic::Streaming<pb::StreamedEvent>) -> Collected {
        let c = Collected::default();
        let events = c.0.clone();
        tokio::spawn(async move {
            while let Ok(Some(e)) = stream.message().await {
                events.lock().unwrap().push(e);
            }
        });
        c
    }

    fn events(&self) -> Vec<pb::StreamedEvent> {
        self.0.lock().unwrap().clone()
    }

    async fn wait_for_len(&self, n: usize) {
        let this = self.clone();
        wait_for(&format!("{n} events on the stream"), || {
            let this = this.clone();
            async move { this.events().len() >= n }
        })
        .await
        .unwrap();
    }

    async fn wait_for_job(&self, job: &str) {
        let this = self.clone();
        wait_for(&format!("JobCreated of {job} on the stream"), || {
            let this = this.clone();
            async move { has_created(&this.events(), job) }
        })
        .await
        .unwrap();
    }
}

fn has_created(events: &[pb::StreamedEvent], job: &str) -> bool {
    events
        .iter()
        .any(|e| e.r#type == "JobCreated" && e.job_id == job)
}

async fn subscribe(
    server_grpc: &str,
    from_seq: u64,
    filter: Option<pb::EventFilter>,
) -> Result<tonic::Streaming<pb::StreamedEvent>, tonic::Status> {
    let mut client = EventServiceClient::connect(server_grpc.to_string())
        .await
        .unwrap();
    client
        .subscribe(pb::SubscribeRequest { from_seq, filter })
        .await
        .map(tonic::Response::into_inner)
}

/// Every event once, in order, seqs 1..=n, each hash the chain link over the previous one (and
/// the event's principal), and the convenience fields agreeing with the event itself.
fn assert_whole_chain(events: &[pb::StreamedEvent]) {
    let mut prev = [0u8; 32];
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e.seq,
            i as u64 + 1,
            "seqs must be 1, 2, 3, ...: {:?}",
            seqs(events)
        );
        let bytes = e.event.as_ref().expect("the event").encode_to_vec();
        let mut h = blake3::Hasher::new();
        h.update(&prev);
        h.update(&e.seq.to_be_bytes());
        // The principal is chained when it is not `system` (see `EventRecord.hash`).
        assert!(!e.principal.is_empty(), "seq {} names no principal", e.seq);
        if e.principal != "system" {
            h.update(&(e.principal.len() as u32).to_be_bytes());
            h.update(e.principal.as_bytes());
        }
        h.update(&bytes);
        let hash: [u8; 32] = *h.finalize().as_bytes();
        assert_eq!(e.hash, hash.to_vec(), "hash of seq {}", e.seq);
        prev = hash;
        let body: Value = serde_json::from_str(&e.body_json).unwrap();
        assert!(body.get(&e.r#type).is_some(), "{body} is a {}", e.r#type);
        assert!(e.at_ms > 0);
    }
}

fn seqs(events: &[pb::StreamedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_delivers_the_log_then_live_events_and_rest_shows_a_jobs_history() {
    let dir = data_dir().unwrap();
    let server = Server::start(dir.path()).unwrap();
    let ch = channel(&server).await;
    let mut jobs = JobServiceClient::new(ch.clone());
    for id in ["a1", "a2", "a3"] {
        jobs.create_job(later(id)).await.unwrap();
    }

    // From 0: the three jobs from the log, then three created while subscribed.
    let all = Collected::start(subscribe(&server.grpc, 0, None).await.unwrap());
    all.wait_for_job("a3").await;
    for id in ["b1", "b2", "b3"] {
        jobs.create_job(later(id)).await.unwrap();
    }
    all.wait_for_job("b3").await;
    let events = all.events();
    assert_whole_chain(&events);
    for id in ["a1", "a2", "a3", "b1", "b2", "b3"] {
        let created: Vec<_> = events
            .iter()
            .filter(|e| e.r#type == "JobCreated" && e.job_id == id)
            .collect();
        assert_eq!(created.len(), 1, "JobCreated of {id} once");
    }

    // From the middle: exactly the same events from there on.
    let mid = events[events.len() / 2].seq;
    let rest = Collected::start(subscribe(&server.grpc, mid, None).await.unwrap());
    let tail: Vec<_> = events.iter().filter(|e| e.seq >= mid).cloned().collect();
    rest.wait_for_len(tail.len()).await;
    assert_eq!(rest.events()[..tail.len()], tail[..]);

    // Filtered by job, then by job and type; live events pass the filter too.
    let b2 = pb::EventFilter {
        job_ids: vec!["b2".into(), "c1".into()],
        ..Default::default()
    };
    let only = Collected::start(subscribe(&server.grpc, 0, Some(b2)).await.unwrap());
    jobs.create_job(later("c1")).await.unwrap();
    only.wait_for_job("c1").await;
    let got = only.events();
    assert!(
        got.iter().all(|e| e.job_id == "b2" || e.job_id == "c1"),
        "{got:?}"
    );
    let b2_events: Vec<_> = events
        .iter()
        .filter(|e| e.job_id == "b2")
        .cloned()
        .collect();
    assert_eq!(got[..b2_events.len()], b2_events[..]);
    assert!(got.windows(2).all(|w| w[0].seq < w[1].seq));

    let typed = pb::EventFilter {
        types: vec!["job_created".into()],
        ..Default::default()
    };
    let created = Collected::start(subscribe(&server.grpc, 0, Some(typed)).await.unwrap());
    created.wait_for_job("c1").await;
    let names: Vec<String> = created.events().iter().map(|e| e.job_id.clone()).collect();
    assert_eq!(names, ["a1", "a2", "a3", "b1", "b2", "b3", "c1"]);

    // Bad input says what to fix.
    let bad = pb::EventFilter {
        job_ids: vec!["no:colons".into()],
        ..Default::default()
    };
    let e = subscribe(&server.grpc, 0, Some(bad)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("filter.job_ids[0]"), "{e:?}");
    let bad = pb::EventFilter {
        types: vec!["Exploded".into()],
        ..Default::default()
    };
    let e = subscribe(&server.grpc, 0, Some(bad)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("JobCreated"), "{e:?}");

    // REST: one job's history, paged like the other Central lists.
    let http = muster_tests::http();
    let get = |path: String| {
        let http = http.clone();
        async move {
            let r = http.get(path).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let (s, body) = get(format!("{}/api/jobs/b2/events?{CENTRAL}", server.rest)).await;
    assert_eq!(s, 200, "{body}");
    let value = body["value"].as_array().unwrap();
    assert_eq!(value.len(), b2_events.len(), "{body}");
    assert_eq!(value[0]["type"], "JobCreated");
    assert_eq!(value[0]["body"]["JobCreated"]["job"], "b2");
    for (v, e) in value.iter().zip(&b2_events) {
        assert_eq!(v["seq"], e.seq);
        assert_eq!(v["jobId"], "b2");
        assert_eq!(v["type"], e.r#type.as_str());
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
    }
    assert!(body.get("nextLink").is_none(), "{body}");

    let (s, page) = get(format!(
        "{}/api/jobs/b2/events?{CENTRAL}&maxpagesize=1",
        server.rest
    ))
    .await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["value"].as_array().unwrap().len(), 1);
    assert_eq!(page["value"][0]["type"], "JobCreated");
    let next = page["nextLink"].as_str().expect("a nextLink").to_string();
    assert!(next.contains("maxpagesize=1"), "{next}");
    let (s, page2) = get(next).await;
    assert_eq!(s, 200, "{page2}");
    assert_eq!(page2["value"][0]["seq"], value[1]["seq"]);

    let (s, body) = get(format!("{}/api/jobs/nope/events?{CENTRAL}", server.rest)).await;
    assert_eq!(s, 404, "{body}");
    assert_eq!(body["error"]["code"], "JobNotFound");
    let (s, body) = get(format!("{}/api/jobs/b2/events", server.rest)).await;
    assert_eq!(s, 400, "{body}");
    let (s, body) = get(format!(
        "{}/api/jobs/b2/events?{CENTRAL}&$skiptoken=abc",
        server.rest
    ))
    .await;
    assert_eq!(s, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("page token"),
        "{body}"
    );
}

/// `muster events follow --output json` as a child process; its lines are collected.
struct Follow {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Follow {
    fn start(endpoints: &str) -> Follow {
        let mut child = muster_tests::muster_cmd()
            .unwrap()
            .args([
                "events",
                "follow",
                "--output",
                "json",
                "--endpoint",
                endpoints,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                sink.lock().unwrap().push(v);
            }
        });
        Follow { child, lines }
    }

    fn events(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    async fn wait_for_job(&self, job: &str) {
        wait_for(
            &format!("muster events follow to print JobCreated of {job}"),
            || async {
                self.events()
                    .iter()
                    .any(|v| v["type"] == "JobCreated" && v["jobId"] == job)
            },
        )
        .await
        .unwrap();
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_of_the_log_see_every_event_once_across_a_leader_change() {
    let mut cluster = TestCluster::start(3, &[]).unwrap();
    let leader = cluster.leader().await.unwrap();
    for n in &cluster.nodes {
        n.wait_ready().await.unwrap();
    }
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let leader_grpc = cluster.nodes[leader].grpc.clone();
    for id in ["before-1", "before-2", "before-3"] {
        create_job(&leader_grpc, id).await;
    }

    // One subscriber on a follower; the CLI on the leader first, the others as fallbacks.
    let on_follower = Collected::start(
        subscribe(&cluster.nodes[follower].grpc, 0, None)
            .await
            .unwrap(),
    );
    let cli = Follow::start(&format!(
        "{leader_grpc},{},{}",
        cluster.nodes[follower].grpc, cluster.nodes[other].grpc
    ));
    on_follower.wait_for_job("before-3").await;
    cli.wait_for_job("before-3").await;

    cluster.nodes[leader].kill9().unwrap();
    let new_leader = cluster.leader_among(&[follower, other]).await.unwrap();
    let new_grpc = cluster.nodes[new_leader].grpc.clone();
    for id in ["after-1", "after-2", "after-3"] {
        create_job(&new_grpc, id).await;
    }
    on_follower.wait_for_job("after-3").await;
    cli.wait_for_job("after-3").await;

    let direct = on_follower.events();
    assert_whole_chain(&direct);
    let printed = cli.events();
    let printed_seqs: Vec<u64> = printed.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        printed_seqs,
        (1..=printed_seqs.len() as u64).collect::<Vec<_>>(),
        "the CLI printed every seq once, in order"
    );
    // Both saw the same log: same types and hash-chain links seq by seq.
    for (v, e) in printed.iter().zip(&direct) {
        assert_eq!(v["type"], e.r#type.as_str(), "seq {}", e.seq);
        let hex: String = e.hash.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(v["hash"], hex.as_str(), "seq {}", e.seq);
    }
    let jobs: BTreeSet<&str> = direct
        .iter()
        .filter(|e| e.r#type == "JobCreated")
        .map(|e| e.job_id.as_str())
        .collect();
    assert_eq!(jobs.len(), 6, "{jobs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_does_not_read_holds_up_no_write_and_misses_nothing() {
    let dir = data_dir().unwrap();
    let server = Server::start(dir.path()).unwrap();
    let ch = channel(&server).await;
    // Subscribed, but not read until every write below is acknowledged: its buffer fills, it
    // falls behind the live feed (more than a thousand commands), and must catch up from disk.
    // A small HTTP/2 window, so the node soon has to hold the events back.
    let small = Channel::from_shared(server.grpc.clone())
        .unwrap()
        .initial_stream_window_size(Some(16 * 1024))
        .initial_connection_window_size(Some(16 * 1024))
        .connect()
        .await
        .map(|c| with_credential(c, Some(&admin_token())))
        .unwrap();
    let mut stream = EventServiceClient::new(small)
        .subscribe(pb::SubscribeRequest {
            from_seq: 0,
            filter: None,
        })
        .await
        .unwrap()
        .into_inner();
    const JOBS: usize = 1500;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let mut jobs = JobServiceClient::new(ch.clone());
        tasks.spawn(async move {
            for i in (worker..JOBS).step_by(8) {
                jobs.create_job(later(&format!("slow-{i:04}")))
                    .await
                    .unwrap();
            }
        });
    }
    tokio::time::timeout(PATIENCE * 2, async {
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    })
    .await
    .expect("the writes finish while a subscriber is not reading");

    let mut events = Vec::new();
    let mut created = 0;
    while created < JOBS {
        let e = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("the stream goes on")
            .unwrap()
            .expect("the stream does not end");
        if e.r#type == "JobCreated" {
            created += 1;
        }
        events.push(e);
    }
    assert_whole_chain(&events);
}

/// Runs `muster ARGS --endpoint E` and returns (success, stdout, stderr).
fn cli(server: &Server, args: &[&str]) -> (bool, String, String) {
    let out = muster_tests::muster_cmd()
        .unwrap()
        .args(args)
        .args(["--endpoint", &server.grpc])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_devices_as_csv_has_a_header_and_a_row_per_device() {
    let dir = data_dir().unwrap();
    let server = Server::start(dir.path()).unwrap();
    channel(&server).await;
    let server = Arc::new(server);
    let s = server.clone();
    tokio::task::spawn_blocking(move || {
        for d in ["csv-1", "csv-2"] {
            let (ok, out, err) = cli(&s, &["device", "register", d]);
            assert!(ok, "{out}{err}");
        }
        // No broker: the registered devices never answer and time out after a second; the
        // unregistered one fails at dispatch.
        let (ok, out, err) = cli(
            &s,
            &[
                "job",
                "create",
                "csv-job",
                "--method",
                "reboot",
                "--devices",
                "csv-1,csv-2,csv-missing",
                "--response-timeout",
                "1",
            ],
        );
        assert!(ok, "{out}{err}");
        let (ok, out, err) = cli(&s, &["job", "watch", "csv-job", "--output", "json"]);
        assert!(ok, "the job completes: {out}{err}");

        let (ok, csv, err) = cli(&s, &["job", "devices", "csv-job", "--output", "csv"]);
        assert!(ok, "{err}");
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 4, "{csv}");
        assert_eq!(
            lines[0],
            "deviceId,run,batch,status,attempts,dispatchedAt,finishedAt,failureReason,lastError,responseStatus,responseBody"
        );
        let row = |id: &str| -> Vec<&str> {
            lines
                .iter()
                .find(|l| l.starts_with(&format!("{id},")))
                .unwrap_or_else(|| panic!("no row for {id}: {csv}"))
                .split(',')
                .collect()
        };
        let timed_out = row("csv-1");
        assert_eq!(timed_out.len(), 11, "{timed_out:?}");
        assert_eq!(timed_out[3], "timedOut");
        assert_eq!(timed_out[4], "1");
        assert!(timed_out[5].ends_with('Z') && timed_out[6].ends_with('Z'));
        assert_eq!(timed_out[7], "timeout");
        assert!(!timed_out[8].is_empty());
        let missing = row("csv-missing");
        assert_eq!(missing[3], "failed");
        assert_eq!(missing[7], "deviceNotFound");
        assert_eq!(row("csv-2")[3], "timedOut");

        let (ok, _, err) = cli(&s, &["job", "get", "csv-job", "--output", "csv"]);
        assert!(!ok);
        assert!(err.contains("--output csv"), "{err}");
    })
    .await
    .unwrap();
}
