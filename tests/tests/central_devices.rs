//! IoT Central's devices (api-version 2022-07-31, `preview`): `PUT`/`GET`/`PATCH`/`DELETE
//! /api/devices/{id}` with `etag`, `simulated`, `provisioned`; device properties (`GET`/`PUT`/
//! `PATCH /api/devices/{id}/properties`), which are the twin's desired and reported properties;
//! bad input in IoT Central's error shape (`error.code`, `message`, `requestId`, `time`) with
//! nothing changed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use muster_tests::{data_dir, Server};
use serde_json::{json, Value};

struct Api {
    c: reqwest::Client,
    base: String,
}

impl Api {
    fn url(&self, path: &str, version: &str) -> String {
        format!("{}{path}?api-version={version}", self.base)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.c.request(m, self.url(path, "2022-07-31"));
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.send(req).await
    }
}

/// IoT Central's error shape, checked whole; returns the message.
fn central_error(status: u16, body: &Value, want_status: u16, code: &str) -> String {
    assert_eq!(status, want_status, "{body}");
    let e = body["error"].as_object().unwrap();
    let keys: Vec<&str> = e.keys().map(String::as_str).collect();
    assert_eq!(keys, ["code", "message", "requestId", "time"], "{body}");
    assert_eq!(e["code"], code, "{body}");
    assert_eq!(e["requestId"].as_str().unwrap().len(), 36, "{body}");
    assert!(e["time"].as_str().unwrap().ends_with(" GMT"), "{body}");
    e["message"].as_str().unwrap().to_string()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_follow_the_data_plane_reference() {
    let (_dir, _server, api) = start().await;
    let (s, d) = api
        .call(
            "PUT",
            "/api/devices/pump-1",
            Some(json!({"displayName": "Pump 1", "template": "dtmi:example:Pump;1", "simulated": false, "enabled": true})),
        )
        .await;
    assert_eq!(s, 200, "{d}");
    let keys: Vec<&str> = d.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "id",
            "etag",
            "displayName",
            "simulated",
            "provisioned",
            "template",
            "enabled"
        ]
    );
    assert_eq!(d["provisioned"], false);
    assert_eq!(d["simulated"], false);
    let etag = d["etag"].as_str().unwrap().to_string();

    // PATCH changes only what it names; the etag moves on.
    let (s, p) = api
        .call(
            "PATCH",
            "/api/devices/pump-1",
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["enabled"], false);
    assert_eq!(p["displayName"], "Pump 1");
    assert_eq!(p["template"], "dtmi:example:Pump;1");
    assert_ne!(p["etag"], etag.as_str());
    // `preview` reads the same device.
    let (s, g) = api
        .send(api.c.get(api.url("/api/devices/pump-1", "preview")))
        .await;
    assert_eq!((s, &g), (200, &p));

    // A stale If-Match is 412; bad bodies are 400; nothing changes.
    let (s, b) = api
        .send(
            api.c
                .patch(api.url("/api/devices/pump-1", "2022-07-31"))
                .header("If-Match", format!("\"{etag}\""))
                .json(&json!({"displayName": "x"})),
        )
        .await;
    central_error(s, &b, 412, "PreconditionFailed");
    for (body, field) in [
        (json!({"enabled": "no"}), "enabled"),
        (json!({"simulated": true}), "simulated"),
        (json!({"colour": "red"}), "colour"),
        (json!({}), "body"),
        (json!({"id": "pump-2", "enabled": true}), "id"),
        (json!({"organizations": ["org-1"]}), "organizations"),
    ] {
        let (s, b) = api.call("PATCH", "/api/devices/pump-1", Some(body)).await;
        let message = central_error(s, &b, 400, "InvalidInput");
        assert!(message.starts_with(field), "{field}: {message}");
    }
    let (_, after) = api.call("GET", "/api/devices/pump-1", None).await;
    assert_eq!(after, p);
    let (s, b) = api
        .call(
            "PATCH",
            "/api/devices/nobody",
            Some(json!({"enabled": true})),
        )
        .await;
    central_error(s, &b, 404, "DeviceNotFound");
    // The code is also in IoT Central's `x-ms-error-code` header.
    let r = api
        .c
        .get(api.url("/api/devices/nobody", "2022-07-31"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-ms-error-code"], "DeviceNotFound");

    // DELETE: 204, then gone (404 in IoT Central's shape).
    let (s, _) = api.call("DELETE", "/api/devices/pump-1", None).await;
    assert_eq!(s, 204);
    let (s, b) = api.call("GET", "/api/devices/pump-1", None).await;
    central_error(s, &b, 404, "DeviceNotFound");
    let (s, b) = api.call("DELETE", "/api/devices/pump-1", None).await;
    central_error(s, &b, 404, "DeviceNotFound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn properties_are_the_twins_desired_properties() {
    let (_dir, _server, api) = start().await;
    api.call(
        "PUT",
        "/api/devices/th-1",
        Some(json!({"displayName": "T"})),
    )
    .await;
    let (s, p) = api
        .call(
            "PATCH",
            "/api/devices/th-1/properties",
            Some(json!({"targetTemperature": 21, "mode": "eco"})),
        )
        .await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["targetTemperature"], 21);
    assert_eq!(p["$metadata"]["targetTemperature"]["desiredValue"], 21);
    assert_eq!(p["$metadata"]["targetTemperature"]["desiredVersion"], 1);
    assert!(p["$metadata"]["mode"]["lastUpdateTime"].is_string(), "{p}");
    // The same data through IoT Hub's twin.
    let twin: Value = api
        .c
        .get(format!("{}/twins/th-1?api-version=2021-04-12", api.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(twin["properties"]["desired"]["targetTemperature"], 21);

    // PUT replaces the whole set; a GET body sent back ($metadata) is accepted.
    let (s, p) = api
        .call(
            "PUT",
            "/api/devices/th-1/properties",
            Some(json!({"mode": "boost", "$metadata": {}})),
        )
        .await;
    assert_eq!(s, 200, "{p}");
    assert!(p.get("targetTemperature").is_none(), "{p}");
    assert_eq!(p["mode"], "boost");
    let (s, g) = api.call("GET", "/api/devices/th-1/properties", None).await;
    assert_eq!((s, &g), (200, &p));

    // Bad input: 400, nothing changed; a missing device is 404.
    for body in [json!([1]), json!({}), json!("x")] {
        let (s, b) = api
            .call("PATCH", "/api/devices/th-1/properties", Some(body))
            .await;
        central_error(s, &b, 400, "InvalidInput");
    }
    let (_, after) = api.call("GET", "/api/devices/th-1/properties", None).await;
    assert_eq!(after, p);
    let (s, b) = api.call("GET", "/api/devices/none/properties", None).await;
    central_error(s, &b, 404, "DeviceNotFound");
    let (s, b) = api
        .send(
            api.c
                .get(format!("{}/api/devices/th-1/properties", api.base)),
        )
        .await;
    central_error(s, &b, 400, "MissingApiVersionParameter");
}
