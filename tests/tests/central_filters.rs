//! IoT Central's OData list options muster does not evaluate (`$filter`, `$top`, `$orderby`,
//! ...) are refused with a 400 naming the option and what to use instead, on every list route,
//! rather than answered as if they had been applied.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use muster_tests::{data_dir, Server};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn central_lists_refuse_odata_options_they_cannot_evaluate() {
    let dir = data_dir().unwrap();
    let server = Server::start(dir.path()).unwrap();
    server.wait_ready().await.unwrap();
    let http = muster_tests::http();
    let get = |path: String| {
        let http = http.clone();
        async move {
            let r = http.get(path).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    for route in ["/api/devices", "/api/jobs", "/api/deviceGroups"] {
        let (status, body) = get(format!(
            "{}{route}?api-version=2022-07-31&maxpagesize=5",
            server.rest
        ))
        .await;
        assert_eq!(status, 200, "{route}: {body}");
        for option in [
            "$filter=displayName%20eq%20'x'",
            "$top=3",
            "$orderby=displayName",
        ] {
            let (status, body) = get(format!(
                "{}{route}?api-version=2022-07-31&{option}",
                server.rest
            ))
            .await;
            assert_eq!(status, 400, "{route}?{option}: {body}");
            let message = body["error"]["message"].as_str().unwrap();
            let name = option.split('=').next().unwrap();
            assert!(message.contains(name), "{message}");
            assert!(message.contains("maxpagesize"), "{message}");
        }
    }
}
