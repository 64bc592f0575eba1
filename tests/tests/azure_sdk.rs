//! Microsoft's own `azure-iot-hub` SDK (PyPI) against a muster node over HTTPS: it authenticates
//! with the connection string the node wrote to `admin.credential`, trusting muster's CA through
//! `REQUESTS_CA_BUNDLE`, creates, gets and cancels a job, and is refused with 401 when the key
//! is wrong (`tests/python/sdk_jobs.py`).
//!
//! Needs a Python with the SDK in `MUSTER_TEST_PYTHON` (`.ci/run` makes a venv and sets it); run
//! elsewhere without it, the test says so and passes, except under `CI`, where it fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use muster_tests::{certs_init, data_dir, free_ports, tls_flags, wait_for, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_creates_gets_and_cancels_a_job_over_https() {
    let Ok(python) = std::env::var("MUSTER_TEST_PYTHON") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "MUSTER_TEST_PYTHON is not set: .ci/run makes the SDK's venv and sets it"
        );
        eprintln!("skipped: set MUSTER_TEST_PYTHON to a Python with azure-iot-hub installed");
        return;
    };
    let dir = data_dir().unwrap();
    let certs = dir.path().join("certs");
    certs_init(&certs, &["--node", "1=127.0.0.1"]).unwrap();
    let port = free_ports(1).unwrap()[0];
    let addr = format!("127.0.0.1:{port}");
    let mut extra: Vec<String> = tls_flags(&certs, 1);
    // The host name the SDK signs its tokens for and connects to: the connection string's.
    extra.extend([
        "--http-addr".into(),
        addr.clone(),
        "--hostname".into(),
        addr.clone(),
    ]);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let node_dir = dir.path().join("node");
    std::fs::create_dir_all(&node_dir).unwrap();
    let server = Server::start_tls(&node_dir, &certs.join("ca.pem"), &extra).unwrap();
    server.wait_ready().await.unwrap();
    let file = server.data_dir().join("admin.credential");
    wait_for("admin.credential", || {
        let exists = file.exists();
        async move { exists }
    })
    .await
    .unwrap();
    let conn = std::fs::read_to_string(&file).unwrap().trim().to_string();
    assert!(conn.starts_with(&format!("HostName={addr};")), "{conn}");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/sdk_jobs.py");
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(&conn)
        .arg("sdk-job-1")
        .env("REQUESTS_CA_BUNDLE", certs.join("ca.pem"))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the SDK run failed:\nstdout:\n{stdout}\nstderr:\n{}\nnode log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log_text()
    );
    assert!(stdout.contains("cancelled sdk-job-1 cancelled"), "{stdout}");
    assert!(stdout.contains("wrong key 401"), "{stdout}");
    // The SDK's calls are in the log under the policy that signed them.
    let key = conn.rsplit("SharedAccessKey=").next().unwrap();
    assert!(!server.log_text().contains(key), "the log holds the key");
}
