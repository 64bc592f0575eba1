//! Microsoft's `azure-iot-hub` SDK drives the device registry and twins over HTTPS
//! (`tests/python/sdk_registry.py`): devices created with given and generated SAS keys, read,
//! disabled with a reason by etag, listed, deleted; twins patched and replaced by etag; and the
//! SDK sees IoT Hub's errors (status, `iothub-errorcode`, `Message`) for a missing device, a
//! taken id and a stale etag.
//!
//! Needs a Python with the SDK in `MUSTER_TEST_PYTHON` (see `tests/tests/azure_sdk.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use muster_tests::SdkNode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_manages_devices_and_twins() {
    let Some(node) = SdkNode::start().await.unwrap() else {
        return;
    };
    let out = node.run_script("sdk_registry.py", &[]).await.unwrap();
    for line in [
        "generated keys 32",
        "taken id 409 DeviceAlreadyExists",
        "updated disabled maintenance",
        "stale device etag 412 PreconditionFailed",
        "stale twin etag 412 PreconditionFailed",
        "missing device 404 DeviceNotFound",
        "stale delete 412 PreconditionFailed",
        "registry ok",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    // The keys the SDK created devices with never reach the log.
    let log = node.server.log_text();
    assert!(
        !log.contains("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="),
        "{log}"
    );
}
