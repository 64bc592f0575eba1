//! Bad input over REST: each is the right status with a JSON error in the route's API shape
//! (IoT Hub's `{"Message": "ErrorCode:...", "ExceptionMessage"}`, else `{"error": {"code",
//! "message"}}`) that says what to fix, nothing is half-written (the resource is absent afterwards), and the
//! server keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use muster_tests::{data_dir, error_of, Server};
use serde_json::{json, Value};

const CENTRAL: &str = "api-version=2022-07-31";
const HUB: &str = "api-version=2021-04-12";

struct Api {
    c: reqwest::Client,
    base: String,
}

/// A JSON error answer, checked for its shape.
#[derive(Debug)]
struct Err {
    status: u16,
    code: String,
    message: String,
}

impl Api {
    async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let text = r.text().await.unwrap();
        if status >= 400 {
            assert!(
                ct.starts_with("application/json"),
                "error {status} is not JSON ({ct:?}): {text}"
            );
        }
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Sends `req` and expects an error with `status`; returns it with its shape checked.
    async fn err(&self, req: reqwest::RequestBuilder, status: u16) -> Err {
        let (s, body) = self.send(req).await;
        assert_eq!(s, status, "{body}");
        // IoT Hub's routes answer `{Message, ExceptionMessage}`, the others `{error}`.
        let obj = body.as_object().unwrap();
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        assert!(
            keys == ["error"] || keys == ["Message", "ExceptionMessage"],
            "error shape: {body}"
        );
        let (code, message) = error_of(&body).unwrap();
        assert!(!code.is_empty() && message.len() > 10, "{body}");
        Err {
            status: s,
            code,
            message,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn absent(&self, path: &str) {
        let (s, body) = self.send(self.c.get(self.url(path))).await;
        assert_eq!(s, 404, "{path} should not exist: {body}");
    }

    /// The server still answers, and still accepts a valid write.
    async fn still_serving(&self, n: u32) {
        let (s, _) = self.send(self.c.get(self.url("/healthz"))).await;
        assert_eq!(s, 200);
        let (s, body) = self
            .send(
                self.c
                    .put(self.url(&format!("/api/devices/alive-{n}?{CENTRAL}")))
                    .json(&json!({"displayName": "alive"})),
            )
            .await;
        assert_eq!(s, 200, "{body}");
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
    let (s, body) = api
        .send(
            api.c
                .put(api.url(&format!("/api/deviceGroups/all?{CENTRAL}")))
                .json(&json!({"displayName": "All", "filter": "SELECT * FROM devices"})),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    (dir, server, api)
}

fn central_job() -> Value {
    json!({
        "displayName": "Set target temperature",
        "group": "all",
        "data": [{"type": "PropertyJobData", "path": "targetTemperature", "value": 55}]
    })
}

fn hub_job() -> Value {
    json!({
        "type": "scheduleDeviceMethod",
        "cloudToDeviceMethod": {"methodName": "reboot"},
        "deviceIds": ["d1"],
        "startTime": "2099-01-01T00:00:00Z"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_are_400_and_write_nothing() {
    let (_dir, _server, api) = start().await;
    let put_central = |id: &str| api.c.put(api.url(&format!("/api/jobs/{id}?{CENTRAL}")));
    let put_hub = |id: &str| api.c.put(api.url(&format!("/jobs/v2/{id}?{HUB}")));

    // Not JSON at all.
    let e = api
        .err(
            put_central("j1")
                .header("content-type", "application/json")
                .body("{\"displayName\": \"x\", "),
            400,
        )
        .await;
    assert_eq!(e.code, "InvalidInput");
    assert!(e.message.contains("not valid JSON"), "{e:?}");
    assert!(e.message.contains("line 1"), "{e:?}");
    api.absent(&format!("/api/jobs/j1?{CENTRAL}")).await;

    // JSON, but not an object.
    let e = api.err(put_hub("j2").json(&json!([1, 2])), 400).await;
    assert!(e.message.starts_with("body:"), "{e:?}");
    api.absent(&format!("/jobs/v2/j2?{HUB}")).await;

    // An empty body.
    let e = api
        .err(
            put_central("j3").header("content-type", "application/json"),
            400,
        )
        .await;
    assert!(e.message.contains("empty"), "{e:?}");

    // Unknown `type` in both shapes, named by field.
    let mut body = hub_job();
    body["type"] = json!("scheduleFirmwareUpdate");
    let e = api.err(put_hub("j4").json(&body), 400).await;
    assert!(e.message.starts_with("type:"), "{e:?}");
    assert!(e.message.contains("scheduleDeviceMethod"), "{e:?}");
    api.absent(&format!("/jobs/v2/j4?{HUB}")).await;
    let mut body = central_job();
    body["data"][0]["type"] = json!("FirmwareJobData");
    let e = api.err(put_central("j5").json(&body), 400).await;
    assert!(e.message.starts_with("data[0].type:"), "{e:?}");
    api.absent(&format!("/api/jobs/j5?{CENTRAL}")).await;

    // An unknown field, a value out of range, a missing group.
    let mut body = central_job();
    body["retries"] = json!(3);
    let e = api.err(put_central("j6").json(&body), 400).await;
    assert!(e.message.starts_with("retries:"), "{e:?}");
    let mut body = central_job();
    body["batch"] = json!({"type": "percentage", "value": 150});
    let e = api.err(put_central("j7").json(&body), 400).await;
    assert!(e.message.starts_with("batch.value:"), "{e:?}");
    let mut body = central_job();
    body["group"] = json!("no-such-group");
    let e = api.err(put_central("j8").json(&body), 400).await;
    assert!(e.message.contains("no-such-group"), "{e:?}");
    api.absent(&format!("/api/jobs/j8?{CENTRAL}")).await;

    // The body's id disagrees with the URL's.
    let mut body = hub_job();
    body["jobId"] = json!("other");
    let e = api.err(put_hub("j9").json(&body), 400).await;
    assert!(e.message.starts_with("jobId:"), "{e:?}");
    api.absent(&format!("/jobs/v2/j9?{HUB}")).await;
    api.absent(&format!("/jobs/v2/other?{HUB}")).await;

    // Twin patches: reported properties are the device's.
    api.still_serving(0).await;
    let e = api
        .err(
            api.c
                .patch(api.url(&format!("/twins/alive-0?{HUB}")))
                .json(&json!({"properties": {"reported": {"x": 1}}})),
            400,
        )
        .await;
    assert!(e.message.contains("properties.reported"), "{e:?}");
    let e = api
        .err(
            api.c
                .patch(api.url(&format!("/twins/alive-0?{HUB}")))
                .header("If-Match", "\"not-a-version\"")
                .json(&json!({"tags": {"x": 1}})),
            400,
        )
        .await;
    assert!(e.message.starts_with("If-Match:"), "{e:?}");

    api.still_serving(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_types_are_handled_gracefully() {
    let (_dir, _server, api) = start().await;
    let body = serde_json::to_string(&central_job()).unwrap();
    // No Content-Type: read as JSON.
    let (s, got) = api
        .send(
            api.c
                .put(api.url(&format!("/api/jobs/no-ct?{CENTRAL}")))
                .body(body.clone()),
        )
        .await;
    assert_eq!(s, 200, "{got}");
    // curl -d's default type with a JSON body: read as JSON.
    let (s, got) = api
        .send(
            api.c
                .put(api.url(&format!("/api/jobs/form-ct?{CENTRAL}")))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body.clone()),
        )
        .await;
    assert_eq!(s, 200, "{got}");
    // A JSON type with parameters.
    let (s, got) = api
        .send(
            api.c
                .put(api.url(&format!("/api/jobs/charset-ct?{CENTRAL}")))
                .header("content-type", "application/json; charset=utf-8")
                .body(body),
        )
        .await;
    assert_eq!(s, 200, "{got}");
    // Something that is neither declared nor shaped as JSON: 415 naming the type to use.
    let e = api
        .err(
            api.c
                .put(api.url(&format!("/api/jobs/xml-ct?{CENTRAL}")))
                .header("content-type", "application/xml")
                .body("<job/>"),
            415,
        )
        .await;
    assert!(e.message.contains("application/json"), "{e:?}");
    api.absent(&format!("/api/jobs/xml-ct?{CENTRAL}")).await;
    // Not UTF-8.
    let e = api
        .err(
            api.c
                .put(api.url(&format!("/api/jobs/bin?{CENTRAL}")))
                .header("content-type", "application/json")
                .body(vec![0xff, 0xfe, 0x00]),
            400,
        )
        .await;
    assert!(e.message.contains("UTF-8"), "{e:?}");
    api.still_serving(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_ids_in_the_path_are_named() {
    let (_dir, _server, api) = start().await;
    // A space in a job id.
    let e = api
        .err(
            api.c
                .put(api.url(&format!("/api/jobs/bad%20id?{CENTRAL}")))
                .json(&central_job()),
            400,
        )
        .await;
    assert!(e.message.starts_with("id:"), "{e:?}");
    assert!(e.message.contains("job id"), "{e:?}");
    // '$' is one of the seed's forbidden characters.
    let e = api
        .err(
            api.c
                .put(api.url(&format!("/jobs/v2/a$b?{HUB}")))
                .json(&hub_job()),
            400,
        )
        .await;
    assert!(e.message.starts_with("jobId:"), "{e:?}");
    let e = api
        .err(api.c.get(api.url(&format!("/jobs/v2/a$b?{HUB}"))), 400)
        .await;
    assert!(e.message.starts_with("jobId:"), "{e:?}");
    // '#' (percent-encoded) is not allowed in device ids; an id that is too long.
    let e = api
        .err(api.c.get(api.url(&format!("/twins/dev%23ice?{HUB}"))), 400)
        .await;
    assert!(e.message.starts_with("deviceId:"), "{e:?}");
    let long = "d".repeat(200);
    let e = api
        .err(
            api.c
                .put(api.url(&format!("/api/devices/{long}?{CENTRAL}")))
                .json(&json!({})),
            400,
        )
        .await;
    assert!(e.message.contains("at most"), "{e:?}");
    // A bad rerun id, a bad group id.
    let e = api
        .err(
            api.c
                .put(api.url(&format!("/api/jobs/j/rerun/re%20run?{CENTRAL}"))),
            400,
        )
        .await;
    assert!(e.message.starts_with("rerunId:"), "{e:?}");
    let e = api
        .err(
            api.c
                .delete(api.url(&format!("/api/deviceGroups/g%20g?{CENTRAL}"))),
            400,
        )
        .await;
    assert!(e.message.starts_with("id:"), "{e:?}");
    // A page token that this service did not issue.
    let e = api
        .err(
            api.c
                .get(api.url(&format!("/jobs/v2/query?{HUB}&continuationToken=a%24b"))),
            400,
        )
        .await;
    assert!(e.message.starts_with("continuationToken:"), "{e:?}");
    // Nor is a well-formed id (what a page ended at, but not a token): restart the listing.
    for url in [
        format!("/jobs/v2/query?{HUB}&continuationToken=job-1"),
        format!("/api/jobs?{CENTRAL}&$skiptoken=job-1"),
        format!("/api/devices?{CENTRAL}&$skiptoken=d-1"),
    ] {
        let e = api.err(api.c.get(api.url(&url)), 400).await;
        assert!(e.message.contains("restart the listing"), "{url}: {e:?}");
    }
    let e = api
        .err(
            api.c
                .get(api.url(&format!("/api/jobs?{CENTRAL}&maxpagesize=0"))),
            400,
        )
        .await;
    assert!(e.message.starts_with("maxpagesize:"), "{e:?}");
    api.still_serving(0).await;
}

/// The value of `name` in a URL's query (page tokens are URL-safe base64: nothing to decode).
fn query_value(url: &str, name: &str) -> String {
    let at = url.find(&format!("{name}=")).unwrap() + name.len() + 1;
    url[at..].split('&').next().unwrap().to_string()
}

/// Issue 18: a page token continues only the listing it was issued for (route, path, filter);
/// on another it is a 400 in that shape's error format (INVALID_ARGUMENT over gRPC) that says
/// it belongs to another listing, not a silent jump into the other list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_token_of_another_listing_is_refused_in_each_shape() {
    use muster_proto::pb;
    let (_dir, server, api) = start().await;
    for d in ["lt-1", "lt-2", "lt-3"] {
        let (s, body) = api
            .send(
                api.c
                    .put(api.url(&format!("/api/devices/{d}?{CENTRAL}")))
                    .json(&json!({"displayName": d})),
            )
            .await;
        assert_eq!(s, 200, "{body}");
    }
    let mut job = hub_job();
    job["deviceIds"] = json!(["lt-1"]);
    for j in ["lt-job-1", "lt-job-2"] {
        let (s, body) = api
            .send(
                api.c
                    .put(api.url(&format!("/jobs/v2/{j}?{HUB}")))
                    .json(&job),
            )
            .await;
        assert!(s == 200 || s == 201, "{body}");
    }

    // IoT Central: the nextLink's token, on the same list (another page size) and on others.
    let (s, page) = api
        .send(
            api.c
                .get(api.url(&format!("/api/devices?{CENTRAL}&maxpagesize=1"))),
        )
        .await;
    assert_eq!(s, 200, "{page}");
    let token = query_value(page["nextLink"].as_str().unwrap(), "$skiptoken");
    let (s, body) = api
        .send(api.c.get(api.url(&format!(
            "/api/devices?{CENTRAL}&maxpagesize=2&$skiptoken={token}"
        ))))
        .await;
    assert_eq!(
        s, 200,
        "the same listing with another page size continues: {body}"
    );
    for req in [
        api.c
            .get(api.url(&format!("/api/deviceGroups?{CENTRAL}&$skiptoken={token}"))),
        api.c
            .get(api.url(&format!("/api/devices?{CENTRAL}&$skiptoken={token}")))
            .query(&[("filter", "contains(displayName, 'lt')")]),
        api.c.get(api.url(&format!(
            "/api/devices?{CENTRAL}&orderby=displayName&$skiptoken={token}"
        ))),
    ] {
        let e = api.err(req, 400).await;
        assert!(
            e.message
                .starts_with("$skiptoken: belongs to another listing")
                && e.message.contains("start this listing again without it"),
            "{e:?}"
        );
    }

    // IoT Hub's job query: the token belongs to its jobType/jobStatus.
    let (s, page) = api
        .send(
            api.c
                .get(api.url(&format!("/jobs/v2/query?{HUB}&pageSize=1"))),
        )
        .await;
    assert_eq!(s, 200, "{page}");
    let token = page["continuationToken"].as_str().unwrap().to_string();
    let e = api
        .err(
            api.c.get(api.url(&format!(
                "/jobs/v2/query?{HUB}&jobStatus=failed&continuationToken={token}"
            ))),
            400,
        )
        .await;
    assert!(e.message.contains("belongs to another listing"), "{e:?}");
    let (s, body) = api
        .send(
            api.c
                .get(api.url(&format!("/jobs/v2/query?{HUB}&pageSize=1")))
                .header("x-ms-continuation", &token),
        )
        .await;
    assert_eq!(s, 200, "{body}");

    // gRPC: a ListDevices token on ListJobs, and a ListJobDevices token on another job.
    let ch = server.channel().await.unwrap();
    let mut devices = pb::device_service_client::DeviceServiceClient::new(ch.clone());
    let mut jobs = pb::job_service_client::JobServiceClient::new(ch);
    let page = devices
        .list_devices(pb::ListDevicesRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!page.next_page_token.is_empty());
    let e = jobs
        .list_jobs(pb::ListJobsRequest {
            page_token: page.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message()
            .starts_with("page_token: belongs to another listing"),
        "{e:?}"
    );
    let more = devices
        .list_devices(pb::ListDevicesRequest {
            page_size: 1,
            page_token: page.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(more.devices.len(), 1);
    api.still_serving(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_version_is_required_and_checked() {
    let (_dir, _server, api) = start().await;
    for path in [
        "/api/jobs",
        "/api/jobs/x",
        "/api/devices",
        "/api/deviceGroups/all",
    ] {
        let e = api.err(api.c.get(api.url(path)), 400).await;
        assert_eq!(e.code, "MissingApiVersionParameter", "{path}");
        assert!(e.message.contains("preview"), "{e:?}");
        let e = api
            .err(
                api.c
                    .get(api.url(&format!("{path}?api-version=1999-01-01"))),
                400,
            )
            .await;
        assert_eq!(e.code, "UnsupportedApiVersion", "{path}");
        assert!(e.message.contains("2022-07-31"), "{e:?}");
    }
    // IoT Hub's code for both is InvalidProtocolVersion; the message says which.
    for path in [
        "/jobs/v2/x",
        "/jobs/v2/query",
        "/twins/x",
        "/devices/x",
        "/devices",
    ] {
        let e = api.err(api.c.get(api.url(path)), 400).await;
        assert_eq!(e.code, "InvalidProtocolVersion", "{path}");
        assert!(e.message.contains("is required"), "{e:?}");
        assert!(e.message.contains("2016-09-30-preview"), "{e:?}");
    }
    // A write without api-version writes nothing.
    let e = api
        .err(api.c.put(api.url("/jobs/v2/nover")).json(&hub_job()), 400)
        .await;
    assert_eq!(e.code, "InvalidProtocolVersion");
    api.absent(&format!("/jobs/v2/nover?{HUB}")).await;
    // A Central version on a Hub route is not accepted either.
    let e = api
        .err(
            api.c
                .put(api.url("/jobs/v2/nover?api-version=preview"))
                .json(&hub_job()),
            400,
        )
        .await;
    assert_eq!(e.code, "InvalidProtocolVersion");
    assert!(e.message.contains("not supported"), "{e:?}");
    api.still_serving(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_413() {
    let (_dir, _server, api) = start().await;
    let mut body = central_job();
    body["data"][0]["value"] = json!("x".repeat(300 * 1024));
    let e = api
        .err(
            api.c
                .put(api.url(&format!("/api/jobs/big?{CENTRAL}")))
                .json(&body),
            413,
        )
        .await;
    assert_eq!(e.code, "PayloadTooLarge");
    assert!(e.message.contains("bytes"), "{e:?}");
    api.absent(&format!("/api/jobs/big?{CENTRAL}")).await;
    let mut body = hub_job();
    body["cloudToDeviceMethod"]["payload"] = json!({"blob": "y".repeat(300 * 1024)});
    let e = api
        .err(
            api.c
                .put(api.url(&format!("/jobs/v2/big?{HUB}")))
                .json(&body),
            413,
        )
        .await;
    assert_eq!(e.status, 413);
    api.absent(&format!("/jobs/v2/big?{HUB}")).await;
    api.still_serving(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_wrong_methods_and_conflicts() {
    let (_dir, _server, api) = start().await;
    let e = api.err(api.c.get(api.url("/api/nothing-here")), 404).await;
    assert_eq!(e.code, "NotFound");
    assert!(e.message.contains("/api/nothing-here"), "{e:?}");
    let e = api.err(api.c.post(api.url("/")), 404).await;
    assert_eq!(e.code, "NotFound");

    let r = api
        .c
        .delete(api.url(&format!("/api/jobs/x?{CENTRAL}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let allow = r.headers()["allow"].to_str().unwrap().to_string();
    assert!(allow.contains("GET") && allow.contains("PUT"), "{allow}");
    let e = api
        .err(
            api.c.get(api.url(&format!("/api/jobs/x/stop?{CENTRAL}"))),
            405,
        )
        .await;
    assert_eq!(e.code, "MethodNotAllowed");
    let e = api
        .err(api.c.put(api.url(&format!("/jobs/v2/query?{HUB}"))), 405)
        .await;
    assert_eq!(e.code, "MethodNotAllowed");

    // 404s for things that do not exist.
    let e = api
        .err(
            api.c.get(api.url(&format!("/api/jobs/ghost?{CENTRAL}"))),
            404,
        )
        .await;
    assert_eq!(e.code, "JobNotFound");
    let e = api
        .err(
            api.c
                .post(api.url(&format!("/api/jobs/ghost/stop?{CENTRAL}"))),
            404,
        )
        .await;
    assert_eq!(e.code, "JobNotFound");
    let e = api
        .err(
            api.c
                .get(api.url(&format!("/api/jobs/ghost/devices?{CENTRAL}"))),
            404,
        )
        .await;
    assert_eq!(e.code, "JobNotFound");

    // 409: a duplicate id; a transition the status does not allow.
    let put = || {
        api.c
            .put(api.url(&format!("/jobs/v2/dup?{HUB}")))
            .json(&hub_job())
    };
    let (s, body) = api.send(put()).await;
    assert_eq!(s, 200, "{body}");
    let e = api.err(put(), 409).await;
    assert_eq!(e.code, "JobExists");
    assert!(e.message.contains("dup"), "{e:?}");
    let e = api
        .err(
            api.c
                .post(api.url(&format!("/api/jobs/dup/resume?{CENTRAL}"))),
            409,
        )
        .await;
    assert_eq!(e.code, "InvalidJobState");
    assert!(e.message.contains("stopped"), "{e:?}");
    let e = api
        .err(
            api.c
                .put(api.url(&format!("/api/jobs/dup/rerun/r1?{CENTRAL}"))),
            409,
        )
        .await;
    assert_eq!(e.code, "InvalidJobState");

    // The job is still the one first created.
    let (s, body) = api
        .send(api.c.get(api.url(&format!("/jobs/v2/dup?{HUB}"))))
        .await;
    assert_eq!(s, 200);
    assert_eq!(body["status"], "scheduled");
    api.still_serving(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let (_dir, _server, api) = start().await;
    let (s, body) = api.send(api.c.get(api.url("/healthz"))).await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = api.send(api.c.get(api.url("/readyz"))).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["isLeader"], true);
}
