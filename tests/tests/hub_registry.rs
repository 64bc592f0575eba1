//! IoT Hub's device identities and twins against the real binary: `PUT`/`GET`/`DELETE
//! /devices/{id}` with `If-Match` (absent, `*`, an etag, a stale etag), `GET /devices?top=`,
//! keys given and generated, status and `statusReason`; `PUT /twins/{id}` (replace) with etags
//! and `$metadata`; bad input answered in IoT Hub's error shape with nothing changed; and a
//! disabled device is not dispatched: a job fails it with the reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine;
use muster_tests::{data_dir, error_of, wait_for, Server};
use serde_json::{json, Value};

const V: &str = "api-version=2021-04-12";
const KEY_A: &str = "q83vEjRWeJASNFZ4kKvN7xI0VniQq83vEjRWeJCrze8=";
const KEY_B: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

struct Api {
    c: reqwest::Client,
    base: String,
}

/// A response: status, `ETag` header, JSON body.
struct Answer {
    status: u16,
    etag: Option<String>,
    errorcode: Option<String>,
    body: Value,
}

impl Api {
    fn url(&self, path: &str) -> String {
        let sep = if path.contains('?') { '&' } else { '?' };
        format!("{}{path}{sep}{V}", self.base)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        let r = req.send().await.unwrap();
        let header = |n: &str| r.headers().get(n).map(|v| v.to_str().unwrap().to_string());
        let (etag, errorcode) = (header("etag"), header("iothub-errorcode"));
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        Answer {
            status,
            etag,
            errorcode,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(self.c.get(self.url(path))).await
    }

    async fn put(&self, path: &str, if_match: Option<&str>, body: &Value) -> Answer {
        let mut req = self.c.put(self.url(path)).json(body);
        if let Some(m) = if_match {
            req = req.header("If-Match", m);
        }
        self.send(req).await
    }

    /// Expects IoT Hub's error shape with `status` and `code`; returns the message.
    fn error(a: &Answer, status: u16, code: &str) -> String {
        assert_eq!(a.status, status, "{}", a.body);
        assert_eq!(a.errorcode.as_deref(), Some(code), "{}", a.body);
        let obj = a.body.as_object().unwrap();
        assert!(
            obj["ExceptionMessage"]
                .as_str()
                .unwrap()
                .starts_with("Tracking ID:"),
            "{}",
            a.body
        );
        let (got, message) = error_of(&a.body).unwrap();
        assert_eq!(got, code, "{}", a.body);
        message
    }
}

async fn start() -> (tempfile::TempDir, Server, Api) {
    let dir = data_dir().unwrap();
    let server = Server::start(dir.path()).unwrap();
    server.wait_ready().await.unwrap();
    let api = Api {
        c: muster_tests::http(),
        base: server.rest.clone(),
    };
    (dir, server, api)
}

fn sas(primary: &str, secondary: &str) -> Value {
    json!({"type": "sas", "symmetricKey": {"primaryKey": primary, "secondaryKey": secondary}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_identities_follow_the_reference() {
    let (_dir, _server, api) = start().await;

    // Created with the caller's keys: every field of the reference's Device.
    let a = api
        .put(
            "/devices/d1",
            None,
            &json!({"deviceId": "d1", "status": "enabled", "authentication": sas(KEY_A, KEY_B),
                    "capabilities": {"iotEdge": false}}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let d1 = a.body;
    let keys: Vec<&str> = d1.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "deviceId",
            "generationId",
            "etag",
            "connectionState",
            "status",
            "statusReason",
            "connectionStateUpdatedTime",
            "statusUpdatedTime",
            "lastActivityTime",
            "cloudToDeviceMessageCount",
            "authentication",
            "capabilities"
        ]
    );
    assert_eq!(d1["authentication"]["symmetricKey"]["primaryKey"], KEY_A);
    assert_eq!(d1["authentication"]["type"], "sas");
    assert_eq!(d1["connectionState"], "Disconnected");
    assert_eq!(d1["statusUpdatedTime"], "0001-01-01T00:00:00Z");
    assert_eq!(d1["cloudToDeviceMessageCount"], 0);
    assert_eq!(
        a.etag.as_deref(),
        Some(format!("\"{}\"", d1["etag"].as_str().unwrap()).as_str())
    );
    let etag1 = d1["etag"].as_str().unwrap().to_string();

    // Keys left out are generated: 32 random bytes each.
    let d2 = api.put("/devices/d2", None, &json!({})).await.body;
    let gen = |k: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(d2["authentication"]["symmetricKey"][k].as_str().unwrap())
            .unwrap()
    };
    assert_eq!(
        (gen("primaryKey").len(), gen("secondaryKey").len()),
        (32, 32)
    );
    assert_ne!(gen("primaryKey"), gen("secondaryKey"));
    assert_eq!(d2["status"], "enabled");

    // No If-Match creates only: a taken id is 409.
    let a = api.put("/devices/d1", None, &json!({})).await;
    Api::error(&a, 409, "DeviceAlreadyExists");

    // A stale etag is 412 and changes nothing; the current one disables with a reason, keeping
    // the keys when none are given.
    let a = api
        .put(
            "/devices/d1",
            Some("\"999\""),
            &json!({"status": "disabled"}),
        )
        .await;
    Api::error(&a, 412, "PreconditionFailed");
    assert_eq!(api.get("/devices/d1").await.body["status"], "enabled");
    let a = api
        .put(
            "/devices/d1",
            Some(&format!("\"{etag1}\"")),
            &json!({"status": "disabled", "statusReason": "stolen"}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["status"], "disabled");
    assert_eq!(a.body["statusReason"], "stolen");
    assert_ne!(a.body["statusUpdatedTime"], "0001-01-01T00:00:00Z");
    assert_ne!(a.body["etag"], etag1.as_str());
    assert_eq!(
        a.body["authentication"]["symmetricKey"]["primaryKey"],
        KEY_A
    );
    assert_eq!(a.body["generationId"], d1["generationId"]);

    // `*` needs a device that exists.
    let a = api.put("/devices/nobody", Some("*"), &json!({})).await;
    Api::error(&a, 404, "DeviceNotFound");
    assert_eq!(api.get("/devices/nobody").await.status, 404);

    // Bad input: 400 in IoT Hub's shape naming the field, nothing created or changed.
    for (body, field) in [
        (json!({"status": "paused"}), "status"),
        (json!({"colour": "red"}), "colour"),
        (json!({"deviceId": "other"}), "deviceId"),
        (
            json!({"authentication": {"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": "AB"}}}),
            "authentication.type",
        ),
        (
            json!({"authentication": {"type": "sas", "symmetricKey": {"primaryKey": KEY_A}}}),
            "authentication.symmetricKey.secondaryKey",
        ),
        (
            json!({"authentication": sas("not base64!", KEY_B)}),
            "authentication.symmetricKey.primaryKey",
        ),
        (json!({"statusReason": "x".repeat(200)}), "statusReason"),
        (json!([1]), "body"),
    ] {
        let a = api.put("/devices/bad-1", None, &body).await;
        let message = Api::error(&a, 400, "ArgumentInvalid");
        assert!(message.starts_with(field), "{field}: {message}");
    }
    let a = api
        .put("/devices/bad-1", Some("yesterday"), &json!({}))
        .await;
    assert!(Api::error(&a, 400, "ArgumentInvalid").starts_with("If-Match"));
    assert_eq!(api.get("/devices/bad-1").await.status, 404);
    let a = api.put("/devices/bad%23id", None, &json!({})).await;
    Api::error(&a, 400, "ArgumentInvalid");
    let a = api.get("/devices/d1?api-version=1999-01-01").await;
    Api::error(&a, 400, "InvalidProtocolVersion");

    // Lists: every device, or `top` of them, in id order.
    let a = api.get("/devices").await;
    let ids: Vec<&str> = a
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["deviceId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["d1", "d2"]);
    assert_eq!(
        api.get("/devices?top=1")
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );
    Api::error(&api.get("/devices?top=0").await, 400, "ArgumentInvalid");

    // Delete: a stale etag is 412, the current one 204, then the device is gone.
    let etag = api.get("/devices/d1").await.body["etag"]
        .as_str()
        .unwrap()
        .to_string();
    let del = |m: Option<String>| {
        let mut req = api.c.delete(api.url("/devices/d1"));
        if let Some(m) = m {
            req = req.header("If-Match", m);
        }
        api.send(req)
    };
    Api::error(&del(Some("\"1\"".into())).await, 412, "PreconditionFailed");
    assert_eq!(del(Some(format!("\"{etag}\""))).await.status, 204);
    Api::error(&api.get("/devices/d1").await, 404, "DeviceNotFound");
    Api::error(&api.get("/twins/d1").await, 404, "DeviceNotFound");
    Api::error(&del(None).await, 404, "DeviceNotFound");

    // Created again under the same id: a new generation.
    let again = api.put("/devices/d1", None, &json!({})).await.body;
    assert_ne!(again["generationId"], d1["generationId"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twins_are_replaced_by_etag_with_metadata() {
    let (_dir, _server, api) = start().await;
    api.put("/devices/t1", None, &json!({"statusReason": "new"}))
        .await;
    let a = api.get("/twins/t1").await;
    let twin = a.body;
    for k in [
        "deviceId",
        "etag",
        "deviceEtag",
        "status",
        "statusReason",
        "statusUpdateTime",
        "connectionState",
        "lastActivityTime",
        "cloudToDeviceMessageCount",
        "authenticationType",
        "x509Thumbprint",
        "version",
        "tags",
        "properties",
        "capabilities",
    ] {
        assert!(twin.get(k).is_some(), "{k} missing: {twin}");
    }
    assert_eq!(twin["properties"]["desired"]["$version"], 0);
    assert!(twin["properties"]["desired"]["$metadata"]["$lastUpdated"].is_string());
    let etag = a.etag.unwrap();

    let a = api
        .c
        .patch(api.url("/twins/t1"))
        .header("If-Match", &etag)
        .json(&json!({"tags": {"site": "b43"}, "properties": {"desired": {"fw": "1.0", "net": {"ssid": "a"}}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(a.status().as_u16(), 200);
    let etag2 = a.headers()["etag"].to_str().unwrap().to_string();

    // Replace by the old etag: 412, nothing changed.
    let body = json!({"tags": {"floor": 2}, "properties": {"desired": {"mode": "eco"}}});
    let a = api.put("/twins/t1", Some(&etag), &body).await;
    Api::error(&a, 412, "PreconditionFailed");
    assert_eq!(
        api.get("/twins/t1").await.body["tags"],
        json!({"site": "b43"})
    );

    // Replace by the current etag: tags and desired are exactly the new ones.
    let a = api.put("/twins/t1", Some(&etag2), &body).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let t = a.body;
    assert_eq!(t["tags"], json!({"floor": 2}));
    let desired = &t["properties"]["desired"];
    assert_eq!(desired["mode"], "eco");
    assert!(desired.get("fw").is_none(), "{desired}");
    assert_eq!(desired["$version"], 2);
    assert_eq!(desired["$metadata"]["mode"]["$lastUpdatedVersion"], 2);
    assert!(desired["$metadata"]["mode"]["$lastUpdated"].is_string());
    assert!(desired["$metadata"].get("net").is_none(), "{desired}");
    // A GET body sent back (reported, read-only fields) is accepted; `*` is unconditional.
    let a = api.put("/twins/t1", Some("*"), &t).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["properties"]["desired"]["mode"], "eco");

    // Bad input: 400 naming the field, nothing changed.
    for (body, field) in [
        (json!({"tags": 5}), "tags"),
        (
            json!({"properties": {"desired": "x"}}),
            "properties.desired",
        ),
        (json!({"wrong": 1}), "wrong"),
    ] {
        let a = api.put("/twins/t1", None, &body).await;
        let message = Api::error(&a, 400, "ArgumentInvalid");
        assert!(message.starts_with(field), "{field}: {message}");
    }
    assert_eq!(api.get("/twins/t1").await.body["tags"], json!({"floor": 2}));
    Api::error(
        &api.put("/twins/none", None, &json!({})).await,
        404,
        "DeviceNotFound",
    );
}

/// The rule for disabled devices (`muster_domain`): a job does not dispatch to them; each ends
/// failed with the reason, and is not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_fails_a_disabled_device_without_dispatching_it() {
    let (_dir, _server, api) = start().await;
    api.put("/devices/on", None, &json!({})).await;
    api.put(
        "/devices/off",
        None,
        &json!({"status": "disabled", "statusReason": "broken"}),
    )
    .await;
    let job = json!({
        "jobId": "twin-job",
        "type": "scheduleUpdateTwin",
        "updateTwin": {"properties": {"desired": {"fw": "2"}}},
        "deviceIds": ["on", "off"],
    });
    let a = api.put("/jobs/v2/twin-job", None, &job).await;
    assert_eq!(a.status, 200, "{}", a.body);
    wait_for("the job to end", || async {
        api.get("/jobs/v2/twin-job").await.body["status"] == "completed"
    })
    .await
    .unwrap();
    let j = api.get("/jobs/v2/twin-job").await.body;
    assert_eq!(j["deviceJobStatistics"]["succeededCount"], 1, "{j}");
    assert_eq!(j["deviceJobStatistics"]["failedCount"], 1, "{j}");
    // The enabled device got the patch, the disabled one did not.
    assert_eq!(
        api.get("/twins/on").await.body["properties"]["desired"]["fw"],
        "2"
    );
    assert!(api.get("/twins/off").await.body["properties"]["desired"]
        .get("fw")
        .is_none());
    let events = api
        .c
        .get(format!(
            "{}/api/jobs/twin-job/events?api-version=2022-07-31",
            api.base
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(events.contains("DeviceDisabled"), "{events}");
}

/// gRPC's view of the same identities: enable/disable with a reason, key rotation, delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_sets_status_rotates_keys_and_deletes() {
    use muster_proto::pb;
    let (_dir, server, api) = start().await;
    api.put(
        "/devices/g1",
        None,
        &json!({"authentication": sas(KEY_A, KEY_B)}),
    )
    .await;
    let mut c =
        pb::device_service_client::DeviceServiceClient::new(server.channel().await.unwrap());
    let d = c
        .set_device_status(pb::SetDeviceStatusRequest {
            device_id: "g1".into(),
            enabled: false,
            status_reason: Some("recalled".into()),
            if_identity_version: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!d.enabled);
    assert_eq!(d.status_reason.as_deref(), Some("recalled"));
    assert_eq!(d.identity_version, 2);
    let rest = api.get("/devices/g1").await.body;
    assert_eq!(rest["status"], "disabled");
    assert_eq!(rest["authentication"]["symmetricKey"]["primaryKey"], KEY_A);

    // A stale identity version is ABORTED and changes nothing.
    let e = c
        .set_device_status(pb::SetDeviceStatusRequest {
            device_id: "g1".into(),
            enabled: true,
            status_reason: None,
            if_identity_version: Some(1),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Aborted, "{e:?}");
    assert_eq!(api.get("/devices/g1").await.body["status"], "disabled");

    let k = c
        .rotate_device_keys(pb::RotateDeviceKeysRequest {
            device_id: "g1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(k.primary_key, KEY_A);
    let rest = api.get("/devices/g1").await.body;
    assert_eq!(
        rest["authentication"]["symmetricKey"]["primaryKey"],
        k.primary_key.as_str()
    );
    assert_eq!(rest["status"], "disabled", "rotation keeps the status");
    let e = c
        .rotate_device_keys(pb::RotateDeviceKeysRequest {
            device_id: "g1".into(),
            primary_key: KEY_A.into(),
            secondary_key: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");

    c.delete_device(pb::DeleteDeviceRequest {
        device_id: "g1".into(),
        if_identity_version: None,
    })
    .await
    .unwrap();
    assert_eq!(api.get("/devices/g1").await.status, 404);
    let e = c
        .delete_device(pb::DeleteDeviceRequest {
            device_id: "g1".into(),
            if_identity_version: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
}
