//! What was acknowledged survives `kill -9`: jobs, devices and their statistics are there after a
//! restart on the same data directory, including writes acknowledged while the process was being
//! killed mid-stream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};

use muster_tests::{data_dir, Server};
use serde_json::{json, Value};

const CENTRAL: &str = "api-version=2022-07-31";
const HUB: &str = "api-version=2021-04-12";

async fn put(c: &reqwest::Client, url: String, body: Value) -> reqwest::Response {
    c.put(url).json(&body).send().await.unwrap()
}

/// A method job that starts in an hour, so nothing about it changes while the test runs.
fn later_job(id: &str, devices: &[String]) -> Value {
    json!({
        "jobId": id,
        "type": "scheduleDeviceMethod",
        "cloudToDeviceMethod": {"methodName": "reboot", "payload": {"delay": 5}, "responseTimeoutInSeconds": 30},
        "deviceIds": devices,
        "startTime": "2099-01-01T00:00:00Z",
        "maxExecutionTimeInSeconds": 3600
    })
}

async fn get_json(c: &reqwest::Client, url: String) -> (u16, Value) {
    let r = c.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_jobs_and_devices_survive_kill_9() {
    let dir = data_dir().unwrap();
    let mut server = Server::start(dir.path()).unwrap();
    server.wait_ready().await.unwrap();
    let c = muster_tests::http();

    let devices: Vec<String> = (0..20).map(|i| format!("dur-{i:03}")).collect();
    for d in &devices {
        let r = put(
            &c,
            format!("{}/api/devices/{d}?{CENTRAL}", server.rest),
            json!({"displayName": d, "enabled": true}),
        )
        .await;
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
    let mut before = Vec::new();
    for j in 0..5 {
        let id = format!("dur-job-{j}");
        let r = put(
            &c,
            format!("{}/jobs/v2/{id}?{HUB}", server.rest),
            later_job(&id, &devices[..(4 * (j + 1))]),
        )
        .await;
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        let (s, body) = get_json(&c, format!("{}/jobs/v2/{id}?{HUB}", server.rest)).await;
        assert_eq!(s, 200);
        before.push((id, body));
    }

    server.kill9().unwrap();
    server.restart().unwrap();
    server.wait_ready().await.unwrap();

    for d in &devices {
        let (s, body) = get_json(&c, format!("{}/api/devices/{d}?{CENTRAL}", server.rest)).await;
        assert_eq!(s, 200, "device {d} lost: {body}");
        assert_eq!(body["displayName"], json!(d));
    }
    for (id, was) in &before {
        let (s, now) = get_json(&c, format!("{}/jobs/v2/{id}?{HUB}", server.rest)).await;
        assert_eq!(s, 200, "job {id} lost");
        assert_eq!(now["status"], was["status"], "{id}");
        assert_eq!(
            now["deviceJobStatistics"], was["deviceJobStatistics"],
            "statistics of {id} changed across the restart"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_acknowledged_while_the_process_is_killed_are_not_lost() {
    let dir = data_dir().unwrap();
    let mut server = Server::start(dir.path()).unwrap();
    server.wait_ready().await.unwrap();
    let c = muster_tests::http();
    let r = put(
        &c,
        format!("{}/api/devices/mid-0?{CENTRAL}", server.rest),
        json!({"displayName": "mid-0"}),
    )
    .await;
    assert!(r.status().is_success());

    // Four writers create jobs as fast as they are acknowledged; the process dies under them.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (c, rest, acked) = (c.clone(), server.rest.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            for n in 0.. {
                let id = format!("mid-{w}-{n}");
                let body = later_job(&id, &["mid-0".to_string()]);
                match c
                    .put(format!("{rest}/jobs/v2/{id}?{HUB}"))
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => acked.lock().unwrap().push(id),
                    Ok(r) => panic!("write refused: {}", r.status()),
                    Err(_) => return, // the server is gone
                }
            }
        }));
    }
    muster_tests::wait_for("50 acknowledged writes", || {
        let n = acked.lock().unwrap().len();
        async move { n >= 50 }
    })
    .await
    .unwrap();
    server.kill9().unwrap();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    server.restart().unwrap();
    server.wait_ready().await.unwrap();
    for id in &acked {
        let (s, body) = get_json(&c, format!("{}/jobs/v2/{id}?{HUB}", server.rest)).await;
        assert_eq!(s, 200, "acknowledged job {id} lost after kill -9: {body}");
    }
    // The node still takes writes after the crash.
    let r = put(
        &c,
        format!("{}/jobs/v2/after-crash?{HUB}", server.rest),
        later_job("after-crash", &["mid-0".to_string()]),
    )
    .await;
    assert!(r.status().is_success());
}

/// A node started with `MUSTER_TEST_CRASH_AT` (a test-only fault).
fn armed(dir: &std::path::Path, spec: &str) -> anyhow::Result<Server> {
    let launch = muster_tests::Launch {
        gid: None,
        env: vec![(muster_store::crashpoint::ENV.to_string(), spec.to_string())],
        fixed_env: Vec::new(),
    };
    Server::start_launch(dir, &[], launch)
}

#[test]
fn a_node_armed_with_an_unknown_crash_point_refuses_to_start() {
    let dir = data_dir().unwrap();
    let e = format!("{:?}", armed(dir.path(), "apply.nowhere").unwrap_err());
    assert!(e.contains("unknown crash point \"apply.nowhere\""), "{e}");
    assert!(
        e.contains("apply.events-written"),
        "the points are listed: {e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_aborts_at_a_crash_point_keeps_what_it_acknowledged() {
    let dir = data_dir().unwrap();
    // The tenth apply (the node's own start takes a few): writes are acknowledged before it,
    // one is in flight at it.
    let mut server = armed(dir.path(), "apply.events-written:10").unwrap();
    server.wait_ready().await.unwrap();
    let c = muster_tests::http();
    let mut acked = Vec::new();
    for n in 0..100 {
        let d = format!("cp-{n:03}");
        match c
            .put(format!("{}/api/devices/{d}?{CENTRAL}", server.rest))
            .json(&json!({"displayName": d}))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => acked.push(d),
            Ok(r) => panic!("write refused: {} {}", r.status(), r.text().await.unwrap()),
            Err(_) => break, // the node aborted under the write
        }
    }
    muster_tests::wait_for("the node to exit", || {
        let exited = server.exited().is_some();
        async move { exited }
    })
    .await
    .unwrap();
    let status = server.exited().unwrap();
    assert!(
        muster_tests::aborted(status),
        "{status:?}\n{}",
        server.log_text()
    );
    assert!(
        server
            .log_text()
            .contains(muster_store::crashpoint::REACHED),
        "{}",
        server.log_text()
    );

    server.launch.env.clear();
    server.restart().unwrap();
    server.wait_ready().await.unwrap();
    for d in &acked {
        let (s, body) = get_json(&c, format!("{}/api/devices/{d}?{CENTRAL}", server.rest)).await;
        assert_eq!(
            s, 200,
            "acknowledged device {d} lost at the crash point: {body}"
        );
    }
    // And it takes writes again.
    let r = put(
        &c,
        format!("{}/api/devices/cp-after?{CENTRAL}", server.rest),
        json!({"displayName": "after"}),
    )
    .await;
    assert!(r.status().is_success());
}
