//! `GET /openapi.json` on a live node: it needs a credential, and it describes exactly the routes
//! the node serves, no more and no fewer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};

use muster_api::access::Access;
use muster_tests::{concrete, data_dir, error_of, http, http_with, Server};
use serde_json::Value;

const METHODS: [&str; 5] = ["GET", "PUT", "POST", "PATCH", "DELETE"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_describes_exactly_the_routes_the_node_serves() {
    let dir = data_dir().unwrap();
    let server = Server::start(dir.path()).unwrap();
    server.wait_ready().await.unwrap();
    let url = format!("{}/openapi.json", server.rest);

    // A caller without a valid credential learns nothing, not even which routes exist.
    let anonymous = reqwest::Client::new();
    let garbage = http_with("SharedAccessSignature sr=x&sig=y&se=1&skn=iothubowner");
    for client in [&anonymous, &garbage] {
        let resp = client.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 401);
        let body: Value = resp.json().await.unwrap();
        assert!(body.get("paths").is_none(), "{body}");
    }

    let resp = http().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let doc: Value = resp.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.0.3");

    let mut described = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            described.insert((method.to_ascii_uppercase(), path.clone()), op.clone());
        }
    }
    let table: BTreeSet<(String, String)> = muster_api::rest::route_table()
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    let in_doc: BTreeSet<(String, String)> = described.keys().cloned().collect();
    assert_eq!(in_doc, table, "the document and the router's table differ");

    // Every described operation is served. The permission check runs only on a served route (an
    // unserved one answers 404 or 405 before it), so a secured operation answers 401 without a
    // credential; an open one answers anything but the router's 404 or a 405.
    for ((method, path), op) in &described {
        let target = format!("{}{}", server.rest, concrete(path));
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = anonymous.request(m, &target).send().await.unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if op["security"] == serde_json::json!([]) {
            assert_ne!(status, 405, "{method} {path}");
            let message = error_of(&body).map(|(_, m)| m).unwrap_or_default();
            assert!(!message.starts_with("no route"), "{method} {path}: {body}");
        } else {
            assert_eq!(
                status, 401,
                "{method} {path} is described but not served: {body}"
            );
        }
    }
    // And nothing else is served on a described path: every other method is a 405.
    let paths: BTreeSet<&String> = described.keys().map(|(_, p)| p).collect();
    for path in paths {
        for method in METHODS {
            if in_doc.contains(&(method.to_string(), path.clone())) {
                continue;
            }
            let target = format!("{}{}", server.rest, concrete(path));
            let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let status = http().request(m, &target).send().await.unwrap().status();
            assert_eq!(status, 405, "{method} {path} is served but not described");
        }
    }

    // The permission the document names is the one the gate enforces.
    for r in muster_api::rest::route_table() {
        let op = &doc["paths"][r.path][r.method.to_ascii_lowercase()];
        match r.access {
            Access::Open => assert!(op.get("x-muster-permission").is_none()),
            Access::Need(p) => assert_eq!(op["x-muster-permission"], p.to_string()),
        }
    }
}
