//! The web console in a real browser (headless Debian chromium through chromedriver): sign in
//! with the token `muster serve --dev` prints, save a device group and create a job through the
//! console's forms, watch the job's progress bar reach 100% without reloading the page (server-
//! sent events), see a failed device's reason, check the console's counts against `muster job
//! watch`, then stop and resume a slow, rate-limited job with the page's buttons, continue a job
//! its gate paused, see a job waiting for its maintenance window, and find scheduled jobs and
//! their occurrences' jobs in the Schedules view. Screenshots go to
//! `target/test-artifacts/console/`.
//!
//! Without chromium and chromedriver the test says so and passes, except under `CI`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use fantoccini::{Client, Locator};
use muster_tests::{artifacts_dir, data_dir, free_ports, muster_bin, DevServer, PATIENCE};
use serde_json::Value;

/// Headless Debian `chromium` driven through `chromedriver` (WebDriver), for the console's
/// browser test. The driver runs on a free loopback port and is killed when this is dropped.
#[derive(Debug)]
pub struct Browser {
    client: fantoccini::Client,
    driver: Child,
    /// The browser's profile, removed on drop.
    _profile: tempfile::TempDir,
}

impl Browser {
    /// `Ok(None)` when chromium or chromedriver is not installed and `CI` is not set (the
    /// caller skips, saying so); under `CI` a missing browser is an error.
    async fn start(width: u32, height: u32) -> anyhow::Result<Option<Browser>> {
        let find = |names: &[&str]| {
            names.iter().find_map(|n| {
                ["/usr/bin", "/usr/local/bin", "/usr/lib/chromium"]
                    .iter()
                    .map(|d| Path::new(d).join(n))
                    .find(|p| p.is_file())
            })
        };
        let (Some(chromium), Some(driver)) = (
            find(&["chromium", "chromium-browser"]),
            find(&["chromedriver"]),
        ) else {
            if std::env::var_os("CI").is_some() {
                bail!("chromium and chromedriver are required under CI (apt-get install chromium chromium-driver)");
            }
            eprintln!("SKIPPED: chromium or chromedriver is not installed (apt-get install chromium chromium-driver)");
            return Ok(None);
        };
        let port = free_ports(1)?[0];
        let driver = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start chromedriver")?;
        let profile = tempfile::Builder::new()
            .prefix("muster-chromium-")
            .tempdir()?;
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    format!("--user-data-dir={}", profile.path().display()),
                    format!("--window-size={width},{height}"),
                ],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut driver = Some(driver);
        loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match fantoccini::ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => {
                    return Ok(Some(Browser {
                        client,
                        driver: driver.take().ok_or_else(|| anyhow!("driver"))?,
                        _profile: profile,
                    }))
                }
                Err(e) if std::time::Instant::now() > deadline => {
                    if let Some(mut d) = driver.take() {
                        let _ = d.kill();
                        let _ = d.wait();
                    }
                    bail!("could not open a chromium session through chromedriver: {e}");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Ends the browser session, then the driver.
    async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Waits until `css` matches an element, for up to [`PATIENCE`].
async fn find(c: &Client, css: &str) -> fantoccini::elements::Element {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            return e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no element {css} within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the page's JavaScript expression `js` is true.
async fn until(c: &Client, what: &str, js: &str) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let v = c
            .execute(&format!("return !!({js});"), vec![])
            .await
            .unwrap_or(Value::Bool(false));
        if v == Value::Bool(true) {
            return;
        }
        if std::time::Instant::now() > deadline {
            let shot = c.screenshot().await.unwrap_or_default();
            let _ = std::fs::write(artifacts_dir("console").unwrap().join("timeout.png"), shot);
            panic!("timed out waiting for {what} ({js})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text(c: &Client, js: &str) -> String {
    match c.execute(&format!("return String({js});"), vec![]).await {
        Ok(Value::String(s)) => s,
        other => panic!("{js}: {other:?}"),
    }
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(artifacts_dir("console").unwrap().join(name), png).unwrap();
}

/// Types `value` into `css`, finding it again if the page re-rendered it in between (a stale
/// element), for up to [`PATIENCE`].
async fn set_value(c: &Client, css: &str, value: &str) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let e = find(c, css).await;
        match async {
            e.clear().await?;
            e.send_keys(value).await
        }
        .await
        {
            Ok(()) => return,
            Err(err) if std::time::Instant::now() < deadline => {
                eprintln!("retrying {css}: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("could not type into {css}: {err}"),
        }
    }
}

/// `muster ARGS` against the dev node with its token: success, stdout, stderr.
fn muster(node: &DevServer, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(muster_bin().unwrap())
        .args(args)
        .args(["--endpoint", &node.grpc])
        .env("MUSTER_TOKEN", &node.token)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_creates_watches_stops_and_resumes_jobs_in_a_browser() {
    let Some(browser) = Browser::start(1280, 1000).await.unwrap() else {
        return;
    };
    let dir = data_dir().unwrap();
    // 20 devices, a quarter of the method calls answer 500 (seeded: the same devices each run).
    let node = DevServer::start(
        dir.path(),
        &[
            "--dev-devices",
            "20",
            "--dev-fail-rate",
            "0.25",
            "--dev-latency-ms",
            "30",
        ],
    )
    .unwrap();
    let c = &browser.client;

    // Sign in with the banner's token.
    c.goto(&format!("{}/ui", node.rest)).await.unwrap();
    set_value(c, "#token", &node.token).await;
    find(c, "#login-submit").await.click().await.unwrap();
    find(c, "#jobs").await;
    assert_eq!(
        text(c, "document.getElementById('who').textContent").await,
        "policy:iothubowner"
    );
    // The token lives in the tab's session storage, not in the URL.
    assert!(!c.current_url().await.unwrap().as_str().contains("sig="));

    // A device group through the Groups page (its form is filled with "all devices").
    c.goto(&format!("{}/ui#/groups", node.rest)).await.unwrap();
    find(c, "#save-group").await.click().await.unwrap();
    find(c, "#group-list tr[data-group='all']").await;

    // A job through the New job form, in IoT Central's shape.
    find(c, "#nav a[data-nav='new']")
        .await
        .click()
        .await
        .unwrap();
    set_value(c, "#job-id", "console-job").await;
    set_value(c, "#job-name", "Reboot from the console").await;
    find(c, "#job-batch-type")
        .await
        .select_by_value("percentage")
        .await
        .unwrap();
    set_value(c, "#job-batch-value", "50").await;
    let preview = text(c, "document.getElementById('job-preview').textContent").await;
    assert!(preview.contains("\"CommandJobData\""), "{preview}");
    // A mark on the page: still there at the end means the page never reloaded.
    c.execute("window.musterMark = 'same page';", vec![])
        .await
        .unwrap();
    find(c, "#create-job").await.click().await.unwrap();
    until(c, "the job page", "location.hash === '#/jobs/console-job'").await;
    until(
        c,
        "the progress bar at 100%",
        "document.querySelector('#job-progress')?.dataset.percent === '100'",
    )
    .await;
    until(
        c,
        "the final status",
        "document.querySelector('#job-status .badge')?.dataset.status === 'completed'",
    )
    .await;
    assert_eq!(text(c, "window.musterMark").await, "same page");
    // A failed device and its reason, from the failures table.
    until(
        c,
        "a failure with its reason",
        "document.querySelector('#failures tr[data-device] .reason')?.textContent.includes('status 500')",
    )
    .await;
    let failed: u64 = text(
        c,
        "document.querySelector('[data-count=failed] b').textContent",
    )
    .await
    .parse()
    .unwrap();
    let succeeded: u64 = text(
        c,
        "document.querySelector('[data-count=succeeded] b').textContent",
    )
    .await
    .parse()
    .unwrap();
    assert!(
        failed > 0 && succeeded > 0,
        "{failed} failed, {succeeded} succeeded"
    );
    assert_eq!(failed + succeeded, 20);
    // Two batches of 50%, both drawn.
    until(
        c,
        "two batches",
        "document.querySelectorAll('#batches .batch').length === 2",
    )
    .await;
    // The device table pages from the server and filters there.
    find(c, "#device-status")
        .await
        .select_by_value("failed")
        .await
        .unwrap();
    until(
        c,
        "the failed devices only",
        &format!("document.querySelectorAll('#devices tbody tr[data-device]').length === {failed}"),
    )
    .await;
    screenshot(c, "job-devices.png").await;
    c.execute("window.scrollTo(0, 0);", vec![]).await.unwrap();
    screenshot(c, "job-completed.png").await;

    // `muster job watch` shows the same numbers.
    let (ok, out, err) = muster(&node, &["job", "watch", "console-job", "--output", "json"]);
    assert!(ok, "{out}{err}");
    let json: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(json["stats"]["failed"], failed, "{out}");
    assert_eq!(json["stats"]["succeeded"], succeeded, "{out}");

    // A slow job (6 devices a minute) created with the CLI; stop and resume it in the console.
    let (ok, out, err) = muster(
        &node,
        &[
            "job", "create", "slow-job", "--method", "reboot", "--group", "all", "--rate", "6",
        ],
    );
    assert!(ok, "{out}{err}");
    c.goto(&format!("{}/ui#/jobs/slow-job", node.rest))
        .await
        .unwrap();
    until(
        c,
        "the slow job running",
        "document.querySelector('#job-status .badge')?.dataset.status === 'running' && !document.getElementById('stop').disabled",
    )
    .await;
    find(c, "#stop").await.click().await.unwrap();
    until(
        c,
        "the slow job stopped",
        "document.querySelector('#job-status .badge')?.dataset.status === 'stopped' && !document.getElementById('resume').disabled",
    )
    .await;
    let stopped_at = text(c, "document.getElementById('job-progress').dataset.percent").await;
    assert_ne!(
        stopped_at, "100",
        "a job limited to 6 devices a minute finished at once"
    );
    screenshot(c, "job-stopped.png").await;
    find(c, "#resume").await.click().await.unwrap();
    until(
        c,
        "the slow job running again",
        "document.querySelector('#job-status .badge')?.dataset.status === 'running'",
    )
    .await;

    gate_window_and_schedules(c, &node).await;

    // On a phone-sized screen: the jobs list and the job page.
    c.set_window_size(390, 844).await.unwrap();
    c.goto(&format!("{}/ui#/jobs", node.rest)).await.unwrap();
    find(c, "#jobs tr[data-job='console-job']").await;
    screenshot(c, "phone-jobs.png").await;
    c.goto(&format!("{}/ui#/jobs/console-job", node.rest))
        .await
        .unwrap();
    until(
        c,
        "the job page on a phone",
        "document.querySelector('#job-progress')?.dataset.percent === '100'",
    )
    .await;
    let overflow = text(
        c,
        "document.documentElement.scrollWidth > document.documentElement.clientWidth",
    )
    .await;
    assert_eq!(overflow, "false", "the page is wider than a phone's screen");
    screenshot(c, "phone-job.png").await;

    let (ok, out, err) = muster(&node, &["job", "cancel", "slow-job"]);
    assert!(ok, "{out}{err}");

    // A viewer sees the jobs but not what it may not do.
    let (ok, out, err) = muster(
        &node,
        &[
            "auth",
            "create-token",
            "viewer-1",
            "--role",
            "viewer",
            "--output",
            "json",
        ],
    );
    assert!(ok, "{out}{err}");
    let viewer: Value = serde_json::from_str(out.trim()).unwrap();
    c.set_window_size(1280, 1000).await.unwrap();
    find(c, "#logout").await.click().await.unwrap();
    set_value(c, "#token", viewer["token"].as_str().unwrap()).await;
    find(c, "#login-submit").await.click().await.unwrap();
    c.goto(&format!("{}/ui#/jobs/console-job", node.rest))
        .await
        .unwrap();
    until(
        c,
        "the job page for a viewer",
        "document.querySelector('#job-progress')?.dataset.percent === '100'",
    )
    .await;
    assert_eq!(
        text(c, "document.getElementById('who').textContent").await,
        "token:viewer-1"
    );
    assert_eq!(
        text(c, "document.querySelector('#nav a[data-nav=new]').hidden").await,
        "true"
    );
    assert_eq!(
        text(
            c,
            "document.querySelector('#nav a[data-nav=cluster]').hidden"
        )
        .await,
        "false"
    );
    for button in ["stop", "resume", "cancel", "rerun"] {
        let disabled = text(c, &format!("document.getElementById('{button}').disabled")).await;
        assert_eq!(disabled, "true", "a viewer's {button} button");
    }
    screenshot(c, "viewer-job.png").await;
    // A paused job: the viewer sees why, and gets no Continue button.
    c.goto(&format!("{}/ui#/jobs/gated", node.rest))
        .await
        .unwrap();
    until(
        c,
        "the paused job for a viewer",
        "!document.getElementById('job-paused')?.hidden && document.getElementById('job-pause-reason').textContent.includes('Paused after batch 2')",
    )
    .await;
    assert_eq!(
        text(c, "document.getElementById('continue') === null").await,
        "true",
        "a viewer's Continue button"
    );
    browser.close().await;
}

/// Issue 16 in the console: a job its gate pauses after each batch (created with the CLI's
/// rollout flags) shows why and continues with the page's button; a job waiting for its
/// maintenance window says until when; the Schedules view lists scheduled jobs with their
/// recurrence and the jobs their occurrences created, linked to the job page.
async fn gate_window_and_schedules(c: &Client, node: &DevServer) {
    let (ok, out, err) = muster(
        node,
        &[
            "job",
            "create",
            "gated",
            "--method",
            "reboot",
            "--group",
            "all",
            "--batch",
            "5",
            "--gate-success",
            "100",
            "--pause-after-each-batch",
            "--rate-base",
            "600",
            "--rate-factor",
            "2",
            "--rate-increase-after",
            "notified:5",
            "--rate-max",
            "2400",
        ],
    );
    assert!(ok, "{out}{err}");
    c.goto(&format!("{}/ui#/jobs/gated", node.rest))
        .await
        .unwrap();
    until(
        c,
        "the gated job paused after its first batch, with a Continue button",
        "document.querySelector('#job-status .badge')?.dataset.status === 'paused' \
         && document.getElementById('job-paused').dataset.batch === '0' \
         && document.getElementById('job-pause-reason').textContent.startsWith('Paused after batch 1: ') \
         && !document.getElementById('continue').disabled",
    )
    .await;
    let rate: u32 = text(c, "document.getElementById('job-rate').dataset.rate")
        .await
        .parse()
        .unwrap();
    assert!((600..=2400).contains(&rate), "rate in force {rate}");
    // Nothing past the first batch has started.
    assert_eq!(
        text(
            c,
            "document.querySelector(\"#batches .batch[data-batch='1'] .progress\").dataset.finished"
        )
        .await,
        "0"
    );
    c.execute("window.scrollTo(0, 0);", vec![]).await.unwrap();
    screenshot(c, "job-paused.png").await;
    find(c, "#continue").await.click().await.unwrap();
    // The second batch runs to its end, and the gate holds the third.
    until(
        c,
        "the second batch finished and the job paused after it",
        "document.querySelector(\"#batches .batch[data-batch='1'] .progress\")?.dataset.finished === '5' \
         && document.getElementById('job-paused').dataset.batch === '1' \
         && document.querySelector('#job-status .badge')?.dataset.status === 'paused'",
    )
    .await;

    // A job waiting for its maintenance window (01:00 on 1 January, UTC) says until when.
    let (ok, out, err) = muster(
        node,
        &[
            "job",
            "create",
            "windowed",
            "--method",
            "reboot",
            "--group",
            "all",
            "--window-cron",
            "0 1 1 1 *",
            "--window-duration",
            "3600",
        ],
    );
    assert!(ok, "{out}{err}");
    c.goto(&format!("{}/ui#/jobs/windowed", node.rest))
        .await
        .unwrap();
    until(
        c,
        "the job waiting for its window",
        "document.getElementById('job-window')?.dataset.state === 'waiting' \
         && document.getElementById('job-window').textContent.startsWith('Waiting for the maintenance window')",
    )
    .await;
    screenshot(c, "job-window.png").await;
    let (ok, out, err) = muster(node, &["job", "cancel", "windowed"]);
    assert!(ok, "{out}{err}");

    // Two schedules through IoT Central's REST shape: one every 2 s for 2 occurrences, one
    // weekly from next year (no occurrence yet).
    let admin = muster_tests::http_with(&node.token);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let at = |ms: i64| muster_types::Timestamp::from_millis(ms).to_rfc3339();
    for (id, schedule) in [
        (
            "pings",
            serde_json::json!({"start": at(now), "intervalSeconds": 2,
                "end": {"type": "occurrences", "occurrences": 2}}),
        ),
        (
            "weekly",
            serde_json::json!({"start": at(now + 365 * 86_400_000), "recurrence": "weekly"}),
        ),
    ] {
        let put = admin
            .put(format!(
                "{}/api/scheduledJobs/{id}?api-version=2022-07-31",
                node.rest
            ))
            .json(&serde_json::json!({
                "displayName": format!("{id} schedule"), "group": "all",
                "data": [{"type": "CommandJobData", "path": "ping"}],
                "schedule": schedule,
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 200, "{}", put.text().await.unwrap());
    }
    find(c, "#nav a[data-nav='schedules']")
        .await
        .click()
        .await
        .unwrap();
    until(
        c,
        "both occurrences' jobs in the Schedules view",
        "document.querySelectorAll(\"#schedules tr[data-schedule='pings'] [data-job]\").length === 2",
    )
    .await;
    let recurrence = text(
        c,
        "document.querySelector(\"#schedules tr[data-schedule='pings'] td[data-label=Recurrence]\").textContent",
    )
    .await;
    assert!(
        recurrence.starts_with("every 2 s") && recurrence.contains("2 occurrences"),
        "{recurrence}"
    );
    let weekly = text(
        c,
        "document.querySelector(\"#schedules tr[data-schedule='weekly']\").textContent",
    )
    .await;
    assert!(
        weekly.contains("weekly") && weekly.contains("none yet"),
        "{weekly}"
    );
    screenshot(c, "schedules.png").await;
    // Disabling a schedule from the page.
    find(c, "button[data-toggle='weekly']")
        .await
        .click()
        .await
        .unwrap();
    until(
        c,
        "the weekly schedule disabled",
        "document.querySelector(\"#schedules tr[data-schedule='weekly']\")?.dataset.enabled === 'false'",
    )
    .await;
    // An occurrence's job opens the job page.
    let first = text(
        c,
        "document.querySelector(\"#schedules tr[data-schedule='pings'] [data-job]\").dataset.job",
    )
    .await;
    find(
        c,
        &format!("#schedules tr[data-schedule='pings'] [data-job='{first}'] a"),
    )
    .await
    .click()
    .await
    .unwrap();
    until(
        c,
        "the occurrence's job page",
        &format!(
            "location.hash === '#/jobs/{first}' && document.getElementById('job-title') !== null"
        ),
    )
    .await;
}

/// Reads server-sent events from `resp` until an event says `final` (or the stream ends):
/// every `progress` event's JSON, in order.
async fn read_events(resp: reqwest::Response) -> Vec<Value> {
    let events = read_all_events(resp).await;
    assert!(
        events.iter().all(|(kind, _)| kind == "progress"),
        "{events:?}"
    );
    events.into_iter().map(|(_, v)| v).collect()
}

/// Reads server-sent events until one says `final` or the stream ends: (event, JSON) pairs.
async fn read_all_events(mut resp: reqwest::Response) -> Vec<(String, Value)> {
    let mut buffer = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("the stream ended in time")
            .expect("the stream reads");
        let Some(chunk) = chunk else { return events };
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(cut) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..cut + 2).collect();
            let event = frame
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or("message");
            let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            let v: Value = serde_json::from_str(data).unwrap();
            let last = v["final"] == true;
            events.push((event.to_string(), v));
            if last {
                return events;
            }
        }
    }
}

/// The console's REST extensions without a browser: `GET /api/jobs/{id}/watch` streams
/// progress until the final status, `GET /api/me` tells each caller what it may do, the
/// device list filters on the server, and an open stream ends with an error event instead of
/// holding up a graceful shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_api_streams_progress_and_tells_callers_their_permissions() {
    let dir = data_dir().unwrap();
    let mut node = DevServer::start(
        dir.path(),
        &["--dev-devices", "12", "--dev-fail-rate", "0.25"],
    )
    .unwrap();
    let admin = muster_tests::http_with(&node.token);
    let url = |path: &str| format!("{}{path}?api-version=2022-07-31", node.rest);

    // The console's files are open and self-contained.
    let page = reqwest::get(format!("{}/ui", node.rest)).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().await.unwrap().contains("/ui/console.js"));
    let js = reqwest::get(format!("{}/ui/console.js", node.rest))
        .await
        .unwrap();
    assert_eq!(js.status(), 200);
    assert_eq!(
        reqwest::get(format!("{}/ui/nope.js", node.rest))
            .await
            .unwrap()
            .status(),
        404
    );
    // Data is not: no credential, no answer.
    let anonymous = reqwest::get(url("/api/me")).await.unwrap();
    assert_eq!(anonymous.status(), 401);

    let me: Value = admin
        .get(url("/api/me"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["principal"], "policy:iothubowner", "{me}");
    assert!(
        me["permissions"]
            .as_array()
            .unwrap()
            .contains(&"jobs.write".into()),
        "{me}"
    );

    let put = admin
        .put(url("/api/deviceGroups/all"))
        .json(&serde_json::json!({"displayName": "All", "filter": "SELECT * FROM devices"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200, "{}", put.text().await.unwrap());
    let job = serde_json::json!({
        "displayName": "SSE", "group": "all",
        "batch": {"type": "number", "value": 4},
        "data": [{"type": "CommandJobData", "path": "reboot", "value": {}}],
    });
    let put = admin
        .put(url("/api/jobs/sse"))
        .json(&job)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200, "{}", put.text().await.unwrap());

    let resp = admin.get(url("/api/jobs/sse/watch")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let events = read_events(resp).await;
    let last = events.last().unwrap();
    assert_eq!(last["status"], "completed", "{last}");
    assert_eq!(last["stats"]["total"], 12);
    assert_eq!(last["stats"]["finished"], 12);
    assert_eq!(last["batchCount"], 3);
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    // A finished job's stream is its one final snapshot.
    let again = read_events(admin.get(url("/api/jobs/sse/watch")).send().await.unwrap()).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["stats"], last["stats"]);
    let missing = admin.get(url("/api/jobs/nope/watch")).send().await.unwrap();
    assert_eq!(missing.status(), 404);

    // The list's progress and the stream agree.
    let list: Value = admin
        .get(format!("{}&progress=true", url("/api/jobs")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["value"][0]["progress"], last["stats"], "{list}");

    // Failed devices, filtered and detailed on the server, with the reason and the answer.
    let failed = last["stats"]["failed"].as_u64().unwrap();
    assert!(failed > 0, "{last}");
    let page: Value = admin
        .get(format!(
            "{}&status=failed&details=true&maxpagesize=1",
            url("/api/jobs/sse/devices")
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let d = &page["value"][0];
    assert_eq!(d["outcome"], "failed", "{page}");
    assert_eq!(d["failureReason"], "deviceError", "{page}");
    assert_eq!(d["response"]["status"], 500, "{page}");
    let next = page["nextLink"].as_str().unwrap_or_default();
    if failed > 1 {
        assert!(
            next.contains("status=failed") && next.contains("details=true"),
            "{next}"
        );
    }
    let bad = admin
        .get(format!("{}&status=exploded", url("/api/jobs/sse/devices")))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    // A viewer's token: /api/me says what it may not do, and the server refuses it anyway.
    let out = std::process::Command::new(muster_bin().unwrap())
        .args([
            "auth",
            "create-token",
            "look",
            "--role",
            "viewer",
            "--output",
            "json",
        ])
        .args(["--endpoint", &node.grpc])
        .env("MUSTER_TOKEN", &node.token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let viewer = muster_tests::http_with(created["token"].as_str().unwrap());
    let me: Value = viewer
        .get(url("/api/me"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["principal"], "token:look", "{me}");
    let perms = me["permissions"].as_array().unwrap();
    assert!(perms.contains(&"jobs.read".into()), "{me}");
    assert!(!perms.contains(&"jobs.write".into()), "{me}");
    let stop = viewer.post(url("/api/jobs/sse/stop")).send().await.unwrap();
    assert_eq!(stop.status(), 403);
    let cluster: Value = viewer
        .get(url("/api/cluster"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cluster["members"][0]["isLeader"], true, "{cluster}");
    assert_eq!(cluster["leader"], cluster["members"][0]["id"], "{cluster}");

    // An open stream does not hold up a graceful shutdown: it ends with an error event.
    let (ok, out, err) = muster(
        &node,
        &[
            "job", "create", "slow", "--method", "reboot", "--group", "all", "--rate", "2",
        ],
    );
    assert!(ok, "{out}{err}");
    let open = admin.get(url("/api/jobs/slow/watch")).send().await.unwrap();
    assert_eq!(open.status(), 200);
    let reader = tokio::spawn(read_all_events(open));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    assert!(node.terminate().unwrap().success());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let events = reader.await.unwrap();
    let (kind, last) = events.last().unwrap();
    assert_eq!(kind, "error", "{events:?}");
    assert_eq!(last["error"]["code"], "ServiceUnavailable", "{last}");
}
