//! Microsoft's `azure-iot-hub` SDK querying a muster node over HTTPS with the connection string
//! the node wrote (`tests/python/sdk_query.py`): `query_iot_hub` over `devices` and, after a
//! method job really ran on a simulated fleet over Mosquitto (`MUSTER_TEST_MQTT_URL`, default
//! `mqtt://127.0.0.1:1883`), over `devices.jobs`, both in several pages; `IoTHubJobManager`
//! creating a method job and a twin job, getting one, querying them by type and status and
//! cancelling one.
//!
//! Needs a Python with the SDK in `MUSTER_TEST_PYTHON` (`.ci/run` makes a venv and sets it); run
//! elsewhere without it, the test says so and passes, except under `CI`, where it fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use muster_devsim::{Fleet, FleetConfig};
use muster_tests::{wait_for, SdkNode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_queries_devices_and_device_jobs_and_manages_jobs() {
    let mqtt =
        std::env::var("MUSTER_TEST_MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:1883".into());
    let Some(node) = SdkNode::start_with(&["--mqtt-url", &mqtt]).await.unwrap() else {
        return;
    };
    let server = &node.server;
    let http = node.client().unwrap();

    // Five devices tagged for the script, answered by a simulated fleet.
    let prefix = format!("sdkq-{}", std::process::id());
    let cfg = FleetConfig {
        brokers: vec![mqtt],
        devices: 5,
        prefix: prefix.clone(),
        client_id_prefix: format!("muster-e2e-{prefix}"),
        ..FleetConfig::default()
    };
    let ids = cfg.device_ids();
    for id in &ids {
        let r = http
            .put(format!(
                "{}/api/devices/{id}?api-version=2022-07-31",
                server.rest
            ))
            .json(&json!({ "displayName": id }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
        let r = http
            .patch(format!("{}/twins/{id}?api-version=2021-04-12", server.rest))
            .json(&json!({"tags": {"sdk": "q"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    }
    let _fleet = Fleet::start(cfg).await.unwrap();
    let connected =
        json!({"query": "SELECT COUNT() AS n FROM devices WHERE connectionState = 'Connected'"});
    wait_for("the fleet is connected", || async {
        let r = http
            .post(format!(
                "{}/devices/query?api-version=2021-04-12",
                server.rest
            ))
            .json(&connected)
            .send()
            .await
            .unwrap();
        r.json::<serde_json::Value>().await.unwrap() == json!([{"n": 5}])
    })
    .await
    .unwrap();

    let stdout = node
        .run_script("sdk_query.py", &[&ids.join(",")])
        .await
        .unwrap();
    for line in [
        "devices 3 pages 5 twins twin",
        "count 5 raw",
        "method job completed 5 5",
        "device jobs 3 pages 5 rows deviceJob all answered 200",
        "twin job completed ring sdk",
        "query scheduled jobResponse ['sdk-q-later']",
        "cancelled sdk-q-later cancelled",
        "all done",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
}
