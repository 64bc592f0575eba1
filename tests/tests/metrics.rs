//! `GET /metrics` on a real node running a real job: a node on Mosquitto
//! (`MUSTER_TEST_MQTT_URL`), a `muster devsim` fleet that registers itself over gRPC, and a job
//! created through the IoT Central shape. The exposition is scraped while the job runs, read with
//! the `prometheus-parse` crate, and checked with Prometheus' own parser and linter
//! (`promtool check metrics`; `.ci/run` installs it, a developer without it gets a note).
//!
//! `prometheus-parse` skips a sample line whose label values hold a `}` (its line pattern stops
//! at the first one), which route templates like `/api/jobs/{id}` do: those lines are checked as
//! text, and promtool parses them all.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use muster_tests::{data_dir, http_with, wait_for, Devsim, Server};
use serde_json::{json, Value};

const V: &str = "api-version=2022-07-31";

/// One scrape: the raw text, and every sample as `name{label="value",...}` -> value (labels
/// sorted, histogram samples as their `_count`).
struct Scrape {
    text: String,
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    async fn take(http: &reqwest::Client, rest: &str) -> Scrape {
        let r = http.get(format!("{rest}/metrics")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
        let text = r.text().await.unwrap();
        let parsed =
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
        let mut samples = BTreeMap::new();
        for s in parsed.samples {
            let mut labels: Vec<(String, String)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.sort();
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            let (name, value) = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => (s.metric, v),
                prometheus_parse::Value::Histogram(buckets) => (
                    format!("{}_count", s.metric),
                    buckets.last().map_or(0.0, |b| b.count),
                ),
                prometheus_parse::Value::Summary(_) => continue,
            };
            samples.insert(format!("{name}{{{}}}", labels.join(",")), value);
        }
        Scrape { text, samples }
    }

    fn get(&self, key: &str) -> f64 {
        self.samples.get(key).copied().unwrap_or(0.0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_while_a_job_runs_and_need_a_credential() {
    let dir = data_dir().unwrap();
    let url = muster_tests::mqtt_url();
    let server = Server::start_with(dir.path(), &["--mqtt-url", &url]).unwrap();
    server.wait_ready().await.unwrap();
    let http = muster_tests::http();

    // No credential, or a wrong one: 401 like every other route.
    let anonymous = reqwest::Client::new();
    let r = anonymous
        .get(format!("{}/metrics", server.rest))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // A viewer may scrape; an auditor (event history only) may not.
    for (role, want) in [("muster-viewer", 200), ("muster-auditor", 403)] {
        let r = http
            .put(format!("{}/api/apiTokens/{role}?{V}", server.rest))
            .json(&json!({"roles": [{"role": role}]}))
            .send()
            .await
            .unwrap();
        let body: Value = r.json().await.unwrap();
        let token = body["token"].as_str().unwrap_or_else(|| panic!("{body}"));
        let r = http_with(token)
            .get(format!("{}/metrics", server.rest))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), want, "{role}");
    }

    let prefix = format!("mt-{}", std::process::id());
    let devsim = Devsim::start(
        dir.path(),
        &[
            "--broker",
            &url,
            "--devices",
            "12",
            "--prefix",
            &prefix,
            "--latency-ms",
            "150",
            "--register",
            &server.grpc,
        ],
    );
    assert!(devsim.first_line().starts_with("devsim ready"));

    let before = Scrape::take(&http, &server.rest).await;
    assert_eq!(before.get("muster_raft_is_leader{}"), 1.0);
    assert!(before.get("muster_raft_term{}") >= 1.0);
    assert_eq!(
        before.get("muster_device_outcomes_total{outcome=\"succeeded\"}"),
        0.0
    );
    // devsim registered its devices over gRPC.
    assert!(
        before.get(
            "muster_grpc_requests_total{code=\"0\",method=\"/muster.v1.DeviceService/ImportDevices\"}"
        ) >= 1.0,
        "{}",
        before.text
    );

    // Three batches of four devices, each answer 150 ms late: the job takes a moment.
    let group = format!("{prefix}-all");
    let r = http
        .put(format!("{}/api/deviceGroups/{group}?{V}", server.rest))
        .json(&json!({"displayName": "metrics", "filter": format!("SELECT * FROM devices WHERE tags.devsim = '{prefix}'")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    let job = json!({
        "displayName": "metrics",
        "group": group,
        "batch": {"type": "number", "value": 4},
        "data": [{"type": "CommandJobData", "target": "dtmi:muster:simulated;1", "path": "reboot", "value": {}}]
    });
    let r = http
        .put(format!("{}/api/jobs/metrics-job?{V}", server.rest))
        .json(&job)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());

    // Scrape until the job is done; the success counter only ever grows and is seen between
    // its start and its end.
    let succeeded = "muster_device_outcomes_total{outcome=\"succeeded\"}";
    let mut seen = vec![0.0];
    let scrapes = std::sync::Mutex::new(Vec::new());
    wait_for("12 devices succeeded", || {
        let http = http.clone();
        let rest = server.rest.clone();
        let scrapes = &scrapes;
        async move {
            let s = Scrape::take(&http, &rest).await;
            let n = s.get(succeeded);
            scrapes.lock().unwrap().push(n);
            n >= 12.0
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", server.log_text(), devsim.log()));
    seen.extend(scrapes.into_inner().unwrap());
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert!(
        seen.iter().any(|n| *n > 0.0 && *n < 12.0),
        "never saw the job part-way: {seen:?}"
    );

    let after = Scrape::take(&http, &server.rest).await;
    assert_eq!(after.get(succeeded), 12.0);
    assert!(after.get("muster_dispatch_requests_sent_total{}") >= 12.0);
    assert!(after.get("muster_dispatch_answers_total{class=\"2xx\"}") >= 12.0);
    assert_eq!(after.get("muster_dispatch_broker_up{broker=\"0\"}"), 1.0);
    assert!(after.get("muster_dispatch_publish_duration_seconds_count{}") >= 12.0);
    assert!(
        after.get("muster_raft_proposals_committed_total{}")
            > before.get("muster_raft_proposals_committed_total{}")
    );
    assert!(after.get("muster_raft_applied_index{}") > before.get("muster_raft_applied_index{}"));
    assert!(after.get("muster_raft_log_append_duration_seconds_count{}") > 0.0);
    assert!(after.get("muster_store_event_seq{}") > before.get("muster_store_event_seq{}"));
    assert!(after.get("muster_store_data_dir_bytes{}") > 0.0);
    wait_for("the job completed", || {
        let http = http.clone();
        let rest = server.rest.clone();
        async move {
            Scrape::take(&http, &rest)
                .await
                .get("muster_jobs{status=\"completed\"}")
                == 1.0
        }
    })
    .await
    .unwrap();
    assert!(
        after.text.lines().any(|l| l
            == "muster_http_requests_total{route=\"/api/jobs/{id}\",method=\"PUT\",status=\"200\"} 1"),
        "{}",
        after.text
    );
    assert!(
        after.get("muster_http_requests_total{method=\"GET\",route=\"/metrics\",status=\"401\"}")
            >= 1.0
    );
    // A path no route takes is counted under one label, not under the path it asked for.
    let _ = http
        .get(format!("{}/no/such/{prefix}", server.rest))
        .send()
        .await
        .unwrap();
    let last = Scrape::take(&http, &server.rest).await;
    assert!(
        last.get("muster_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"}")
            >= 1.0
    );
    assert!(!last.text.contains(&format!("/no/such/{prefix}")));
    // Job and device ids never become labels.
    assert!(!last.text.contains("metrics-job"));
    assert!(!last.text.contains(&format!("{prefix}-0")));

    // Every family has HELP and TYPE.
    let mut families = 0;
    for line in last.text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families += 1;
            let name = rest.split(' ').next().unwrap();
            assert!(
                last.text.contains(&format!("# HELP {name} ")),
                "{name} has no HELP"
            );
        } else if !line.starts_with('#') && !line.is_empty() {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| last.text.contains(&format!("# TYPE {f} histogram")))
                .unwrap_or(name);
            assert!(
                last.text.contains(&format!("# TYPE {family} ")),
                "{name} has no TYPE"
            );
        }
    }
    assert!(families >= 25, "{}", last.text);
    promtool_check(&last.text);
}

/// `promtool check metrics`: Prometheus' parser and its naming lint (HELP present, counters end
/// in `_total`, base units). Required in CI; skipped with a note where promtool is missing.
fn promtool_check(text: &str) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("promtool not found ({e}): the exposition was not checked by Prometheus' own parser (apt-get install prometheus)");
            return;
        }
        Err(e) => panic!("promtool is required in CI: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
