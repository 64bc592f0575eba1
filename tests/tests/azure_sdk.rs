//! Microsoft's own `azure-iot-hub` SDK (PyPI) against a muster node over HTTPS: it authenticates
//! with the connection string the node wrote to `admin.credential`, trusting muster's CA through
//! `REQUESTS_CA_BUNDLE`, creates, gets and cancels a job, and is refused with 401 when the key
//! is wrong (`tests/python/sdk_jobs.py`).
//!
//! Needs a Python with the SDK in `MUSTER_TEST_PYTHON` (`.ci/run` makes a venv and sets it); run
//! elsewhere without it, the test says so and passes, except under `CI`, where it fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use muster_tests::SdkNode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_creates_gets_and_cancels_a_job_over_https() {
    let Some(node) = SdkNode::start().await.unwrap() else {
        return;
    };
    let stdout = node
        .run_script("sdk_jobs.py", &["sdk-job-1"])
        .await
        .unwrap();
    assert!(stdout.contains("cancelled sdk-job-1 cancelled"), "{stdout}");
    assert!(stdout.contains("wrong key 401"), "{stdout}");
    // The SDK's calls are in the log under the policy that signed them.
    let conn = &node.connection_string;
    let key = conn.rsplit("SharedAccessKey=").next().unwrap();
    assert!(
        !node.server.log_text().contains(key),
        "the log holds the key"
    );
}
