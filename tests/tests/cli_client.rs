//! The `muster` binary's client subcommands against a real server: every command with
//! `--output json`, checked through the JSON it prints, plus exit statuses and error text.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

use muster_tests::{data_dir, muster_bin, wait_for, Server};
use serde_json::Value;

/// Runs `muster ARGS --endpoint E --output json` (blocking: the CLI is a separate process).
fn run(server: &Server, args: &[&str]) -> Output {
    muster_tests::muster_cmd()
        .unwrap()
        .args(args)
        .args(["--endpoint", &server.grpc, "--output", "json"])
        .output()
        .unwrap()
}

/// Runs a command that must succeed and returns the JSON document it printed.
fn ok(server: &Server, args: &[&str]) -> Value {
    let out = run(server, args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "muster {args:?} failed: {stderr}\n{stdout}"
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("muster {args:?} did not print one JSON document ({e}): {stdout}")
    })
}

/// The `deviceId`s of a printed list of devices, in order.
fn device_ids(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|d| d["deviceId"].as_str().unwrap())
        .collect()
}

/// Runs a command that must fail and returns its stderr.
fn fails(server: &Server, args: &[&str]) -> String {
    let out = run(server, args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "muster {args:?} succeeded");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

async fn ready(server: &Server) -> anyhow::Result<()> {
    let bin = muster_bin()?;
    let endpoint = server.grpc.clone();
    wait_for("the server to answer `muster job list`", || {
        let bin = bin.clone();
        let endpoint = endpoint.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                Command::new(bin)
                    .env("MUSTER_TOKEN", muster_tests::admin_connection_string())
                    .args(["job", "list", "--endpoint", &endpoint])
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .await
            .unwrap_or(false)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_print_json_for_scripts() {
    let dir = data_dir().unwrap();
    let server = Server::start(dir.path()).unwrap();
    ready(&server).await.unwrap();
    // The CLI blocks; run the rest off the async runtime.
    let files = dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || scenario(&server, &files))
        .await
        .unwrap();
}

fn scenario(s: &Server, files: &Path) {
    // Devices.
    let d = ok(
        s,
        &[
            "device",
            "register",
            "cli-1",
            "--tags",
            r#"{"site": "b43"}"#,
            "--display-name",
            "One",
        ],
    );
    assert_eq!(d["deviceId"], "cli-1");
    assert_eq!(d["displayName"], "One");
    assert_eq!(d["tags"]["site"], "b43");
    assert_eq!(d["enabled"], true);
    let err = fails(s, &["device", "register", "cli-1"]);
    assert!(err.contains("already exists"), "{err}");

    let jsonl = write(
        files,
        "devices.jsonl",
        "{\"deviceId\": \"cli-2\", \"tags\": {\"site\": \"b43\"}}\n{\"deviceId\": \"cli-3\", \"tags\": {\"site\": \"b44\"}}\n",
    );
    assert_eq!(ok(s, &["device", "import", &jsonl])["imported"], 2);
    let array = write(
        files,
        "devices.json",
        r#"[{"deviceId": "cli-4", "displayName": "Four", "enabled": false}]"#,
    );
    assert_eq!(ok(s, &["device", "import", &array])["imported"], 1);
    let bad = write(files, "bad.json", r#"[{"deviceId": "has space"}]"#);
    let err = fails(s, &["device", "import", &bad]);
    assert!(err.contains("devices[0].device_id"), "{err}");

    let four = ok(s, &["device", "get", "cli-4"]);
    assert_eq!(four["enabled"], false);
    assert_eq!(four["displayName"], "Four");
    let list = ok(s, &["device", "list", "--page-size", "2"]);
    let ids = device_ids(&list);
    assert_eq!(ids, ["cli-1", "cli-2", "cli-3", "cli-4"]);
    let limited = ok(s, &["device", "list", "--limit", "3", "--page-size", "2"]);
    assert_eq!(limited.as_array().unwrap().len(), 3);
    let matched = ok(s, &["device", "query", "tags.site = 'b43'", "--ids-only"]);
    assert_eq!(matched, serde_json::json!(["cli-1", "cli-2"]));
    let twins = ok(
        s,
        &[
            "device",
            "query",
            "SELECT * FROM devices WHERE tags.site = 'b44'",
        ],
    );
    assert_eq!(twins[0]["deviceId"], "cli-3");
    // `--limit` counts whole devices as well as ids, across pages.
    let first3 = ok(
        s,
        &[
            "device",
            "query",
            "SELECT * FROM devices",
            "--limit",
            "3",
            "--page-size",
            "2",
        ],
    );
    let ids = device_ids(&first3);
    assert_eq!(ids, ["cli-1", "cli-2", "cli-3"], "{first3}");
    let first_id = ok(
        s,
        &[
            "device",
            "query",
            "SELECT * FROM devices",
            "--ids-only",
            "--limit",
            "1",
        ],
    );
    assert_eq!(first_id, serde_json::json!(["cli-1"]));
    let err = fails(s, &["device", "query", "tags.site = "]);
    assert!(err.contains("query"), "{err}");

    let twin = ok(
        s,
        &[
            "device",
            "update-twin",
            "cli-1",
            "--desired",
            r#"{"fw": "2.0"}"#,
        ],
    );
    assert_eq!(twin["properties"]["desired"]["fw"], "2.0");
    let err = fails(
        s,
        &[
            "device",
            "update-twin",
            "cli-1",
            "--tags",
            r#"{"a": 1}"#,
            "--if-version",
            "1",
        ],
    );
    assert!(err.contains("version"), "{err}");

    // Groups.
    let g = ok(s, &["group", "put", "lab", "--query", "tags.site = 'b43'"]);
    assert_eq!(g["groupId"], "lab");
    assert_eq!(g["query"], "SELECT * FROM devices WHERE tags.site = 'b43'");
    assert_eq!(ok(s, &["group", "get", "lab"])["groupId"], "lab");
    assert_eq!(ok(s, &["group", "list"]).as_array().unwrap().len(), 1);

    // A job from flags, scheduled far ahead so it stays put.
    let j = ok(
        s,
        &[
            "job",
            "create",
            "cli-job",
            "--method",
            "reboot",
            "--payload",
            r#"{"delay": 5}"#,
            "--devices",
            "cli-1,cli-2,cli-3",
            "--batch",
            "50%",
            "--threshold",
            "10%",
            "--response-timeout",
            "20",
            "--max-attempts",
            "3",
            "--display-name",
            "Reboot",
            "--start-at",
            "2099-01-01T00:00:00Z",
            // The rollout controls of issue 16.
            "--rate-base",
            "5",
            "--rate-factor",
            "1.5",
            "--rate-increase-after",
            "succeeded:2",
            "--rate-max",
            "50",
            "--abort",
            "failed:10%:min=2",
            "--abort",
            "any:2",
            "--backoff",
            "base=1s,factor=3,max=1m,jitter=20%",
            "--backoff-timed-out",
            "base=500ms",
            "--gate-success",
            "95",
            "--pause-after-each-batch",
        ],
    );
    assert_eq!(j["jobId"], "cli-job");
    assert_eq!(j["displayName"], "Reboot");
    assert_eq!(j["status"], "scheduled");
    assert_eq!(j["type"], "method");
    assert_eq!(j["stats"]["total"], 3);
    assert_eq!(j["batches"].as_array().unwrap().len(), 2);
    assert_eq!(j["spec"]["retry"]["max_attempts"], 3);
    // `job get` shows the rollout flags back, as muster's JobSpec.
    let got = ok(s, &["job", "get", "cli-job"]);
    let (rollout, retry) = (&got["spec"]["rollout"], &got["spec"]["retry"]);
    assert_eq!(
        rollout["exponential"],
        serde_json::json!({"base_per_minute": 5, "increment_factor_tenths": 15,
            "criterion": {"SucceededDevices": 2}, "maximum_per_minute": 50}),
        "{got}"
    );
    assert_eq!(
        rollout["abort"],
        serde_json::json!([
            {"kind": "Failed", "threshold": {"Percentage": 10}, "min_finished": 2},
            {"kind": "Any", "threshold": {"Count": 2}, "min_finished": 0},
        ]),
        "{got}"
    );
    assert_eq!(
        rollout["gate"],
        serde_json::json!({"success_percent": 95, "on_failure": "Pause",
            "pause_after_each_batch": true}),
        "{got}"
    );
    assert_eq!(
        retry["backoff_failed"],
        serde_json::json!({"base_ms": 1000, "factor": 3, "max_ms": 60000, "jitter_percent": 20}),
        "{got}"
    );
    assert_eq!(
        retry["backoff_timed_out"],
        serde_json::json!({"base_ms": 500, "factor": 2, "max_ms": 500, "jitter_percent": 0}),
        "{got}"
    );
    // A bad rollout flag is refused before anything is sent, naming the flag.
    for (flag, value) in [
        ("--abort", "failed:150%"),
        ("--gate-success", "lots"),
        ("--backoff", "base=soon"),
    ] {
        let err = fails(
            s,
            &[
                "job",
                "create",
                "x",
                "--method",
                "m",
                "--devices",
                "cli-1",
                flag,
                value,
            ],
        );
        assert!(err.contains(flag), "{flag} {value}: {err}");
    }
    let err = fails(
        s,
        &[
            "job",
            "create",
            "cli-job",
            "--method",
            "reboot",
            "--devices",
            "cli-1",
        ],
    );
    assert!(err.contains("already exists"), "{err}");
    let err = fails(
        s,
        &[
            "job",
            "create",
            "x",
            "--method",
            "reboot",
            "--devices",
            "cli-1",
            "--batch",
            "lots",
        ],
    );
    assert!(err.contains("--batch"), "{err}");
    let err = fails(s, &["job", "create", "x", "--method", "reboot"]);
    assert!(err.contains("--devices"), "{err}");

    // The spec `job get` prints is a file `job create --file` reads.
    let got = ok(s, &["job", "get", "cli-job"]);
    let spec = write(files, "spec.json", &got["spec"].to_string());
    let copy = ok(s, &["job", "create", "cli-copy", "--file", &spec]);
    assert_eq!(copy["spec"], got["spec"]);
    assert_eq!(copy["status"], "scheduled");

    // An IoT Central job body, as a file.
    let central = write(
        files,
        "central.json",
        r#"{"displayName": "Set fw", "group": "lab",
            "batch": {"type": "number", "value": 1},
            "data": [{"type": "PropertyJobData", "path": "fw", "value": "3.0"}]}"#,
    );
    let c = ok(s, &["job", "create", "cli-central", "--file", &central]);
    assert_eq!(c["displayName"], "Set fw");
    assert_eq!(c["type"], "twin");

    // A twin job from flags finishes by itself (no device has to answer); watch follows it.
    ok(
        s,
        &[
            "job",
            "create",
            "cli-twin",
            "--desired",
            r#"{"mode": "eco"}"#,
            "--group",
            "lab",
        ],
    );
    let watched = ok(s, &["job", "watch", "cli-twin"]);
    assert_eq!(watched["status"], "completed");
    assert_eq!(watched["stats"]["succeeded"], 2);
    let d1 = ok(s, &["device", "get", "cli-1"]);
    assert_eq!(d1["properties"]["desired"]["mode"], "eco");

    // Lists, filters, devices.
    let all = ok(s, &["job", "list", "--page-size", "1"]);
    let ids: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["jobId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["cli-central", "cli-copy", "cli-job", "cli-twin"]);
    let scheduled = ok(s, &["job", "list", "--status", "scheduled"]);
    assert_eq!(scheduled.as_array().unwrap().len(), 2);
    let methods = ok(s, &["job", "list", "--type", "method"]);
    assert_eq!(methods.as_array().unwrap().len(), 2);
    let devices = ok(s, &["job", "devices", "cli-job", "--page-size", "2"]);
    let devices = devices.as_array().unwrap();
    assert_eq!(devices.len(), 3);
    assert_eq!(devices[0]["deviceId"], "cli-1");
    assert_eq!(devices[2]["batch"], 1);
    assert_eq!(devices[0]["status"], "pending");

    // Steering.
    assert_eq!(ok(s, &["job", "stop", "cli-job"])["status"], "stopped");
    assert_eq!(ok(s, &["job", "resume", "cli-job"])["status"], "scheduled");
    assert_eq!(ok(s, &["job", "cancel", "cli-job"])["status"], "cancelled");
    let err = fails(s, &["job", "rerun", "cli-job", "r1"]);
    assert!(err.contains("nothing to rerun"), "{err}");
    let err = fails(s, &["job", "get", "missing"]);
    assert!(
        err.contains("not found") && err.contains("missing"),
        "{err}"
    );

    // Watching a cancelled job prints it and exits non-zero.
    let out = run(s, &["job", "watch", "cli-job"]);
    assert!(!out.status.success());
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["status"], "cancelled");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cancelled"));

    // Group removal.
    assert_eq!(ok(s, &["group", "delete", "lab"])["deleted"], "lab");
    fails(s, &["group", "get", "lab"]);
}

#[test]
fn an_unreachable_endpoint_is_named() {
    let out = muster_tests::muster_cmd()
        .unwrap()
        .args(["job", "list", "--endpoint", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach muster at http://127.0.0.1:1"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let out = muster_tests::muster_cmd()
        .unwrap()
        .args(["device", "list", "--endpoint", "not a url"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--endpoint"), "{err}");
}

/// `muster schedule`: a schedule every second, twice, then its jobs and its completion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_commands_create_list_and_show_jobs() {
    let dir = data_dir().unwrap();
    let server = Server::start(dir.path()).unwrap();
    ready(&server).await.unwrap();
    tokio::task::spawn_blocking(move || {
        let s = &server;
        let created = ok(
            s,
            &[
                "schedule",
                "create",
                "tick",
                "--devices",
                "cli-s1",
                "--desired",
                r#"{"a":1}"#,
                "--start",
                "now",
                "--every",
                "1",
                "--occurrences",
                "2",
            ],
        );
        assert_eq!(created["id"], "tick", "{created}");
        assert_eq!(created["enabled"], true, "{created}");
        let deadline = std::time::Instant::now() + muster_tests::PATIENCE;
        loop {
            let got = ok(s, &["schedule", "get", "tick"]);
            if got["completed"] == true {
                assert_eq!(got["created"], 2, "{got}");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never completed: {got}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let jobs = ok(s, &["schedule", "jobs", "tick"]);
        let ids: Vec<&str> = jobs
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["jobId"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["tick-1", "tick-2"], "{jobs}");
        let list = ok(s, &["schedule", "list"]);
        assert_eq!(list[0]["id"], "tick", "{list}");
        // Two creates of one id at once: the log decides, exactly one wins.
        let create = [
            "schedule",
            "create",
            "race",
            "--devices",
            "cli-s1",
            "--desired",
            r#"{"a":2}"#,
            "--start",
            "2099-01-01T00:00:00Z",
            "--recurrence",
            "daily",
        ];
        let outcomes: Vec<std::process::Output> = std::thread::scope(|t| {
            let a = t.spawn(|| run(s, &create));
            let b = t.spawn(|| run(s, &create));
            vec![a.join().unwrap(), b.join().unwrap()]
        });
        let won = outcomes.iter().filter(|o| o.status.success()).count();
        assert_eq!(won, 1, "exactly one create of `race` succeeds");
        let lost = outcomes.iter().find(|o| !o.status.success()).unwrap();
        let err = String::from_utf8_lossy(&lost.stderr);
        assert!(err.contains("already exists"), "{err}");
        let err = fails(
            s,
            &[
                "schedule",
                "create",
                "bad",
                "--devices",
                "x",
                "--desired",
                r#"{"a":1}"#,
                "--start",
                "now",
                "--recurrence",
                "daily",
                "--time-zone",
                "Mars/Base",
            ],
        );
        assert!(err.contains("timeZone"), "{err}");
        assert!(run(s, &["schedule", "delete", "tick"]).status.success());
        assert!(fails(s, &["schedule", "get", "tick"]).contains("does not exist"));
    })
    .await
    .unwrap();
}

/// `device import` sends a large file in batches (one call per 10,000 devices: a million in one
/// call would pass gRPC's message limit); a batch the node refuses says how many went in before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_import_sends_a_large_file_in_batches() {
    let dir = data_dir().unwrap();
    let server = Server::start(dir.path()).unwrap();
    ready(&server).await.unwrap();
    let files = dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let lines = |n: usize, bad: Option<usize>| {
            (0..n)
                .map(|i| {
                    let id = if Some(i) == bad {
                        "has space".to_string()
                    } else {
                        format!("big-{i:05}")
                    };
                    format!("{{\"deviceId\": \"{id}\"}}\n")
                })
                .collect::<String>()
        };
        let big = write(&files, "big.jsonl", &lines(25_000, None));
        assert_eq!(ok(&server, &["device", "import", &big])["imported"], 25_000);
        let count = ok(&server, &["query", "SELECT COUNT() AS n FROM devices"]);
        assert_eq!(count["items"][0]["n"], 25_000, "{count}");

        let bad = write(&files, "bad.jsonl", &lines(25_000, Some(15_000)));
        let err = fails(&server, &["device", "import", &bad]);
        assert!(err.contains("devices[5000].device_id"), "{err}");
        assert!(
            err.contains("10000 of the 25000 devices were imported before this batch"),
            "{err}"
        );
    })
    .await
    .unwrap();
}
