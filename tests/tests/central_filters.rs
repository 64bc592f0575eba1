//! IoT Central's list options as its how-to "Use ODATA filters" writes them, without `$`:
//! `filter` and `orderby` on `GET /api/devices`, with `maxpagesize` and the `nextLink` paging
//! (the link carries the filter and the order, so every page continues the same list). The `$`
//! spellings and the other OData options are refused with a 400 naming the option and what to
//! use instead, on every list route, as are `filter` / `orderby` where the reference has none
//! (the job lists).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use muster_tests::{data_dir, Server};
use serde_json::{json, Value};

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

/// "Device Groups - List": IoT Central's 2022-07-31 reference takes no filter or orderby, its
/// 2022-10-31-preview takes both; muster answers each version as its reference says, and pages
/// either with maxpagesize.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_group_list_takes_the_options_of_the_callers_api_version() {
    let dir = data_dir().unwrap();
    let server = Server::start(dir.path()).unwrap();
    server.wait_ready().await.unwrap();
    let http = muster_tests::http();
    for (id, name) in [("g1", "Alpha sensors"), ("g2", "Beta thermostats")] {
        let r = http
            .put(format!(
                "{}/api/deviceGroups/{id}?api-version=2022-07-31",
                server.rest
            ))
            .json(&json!({"displayName": name, "filter": "SELECT * FROM devices"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    }
    let list = format!("{}/api/deviceGroups", server.rest);
    let get = |query: Vec<(&'static str, &'static str)>| {
        let req = http.get(&list).query(&query);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let ids = |body: &Value| -> Vec<String> {
        body["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["id"].as_str().unwrap().to_string())
            .collect()
    };

    for (option, value) in [
        ("filter", "contains(displayName, 'Beta')"),
        ("orderby", "displayName desc"),
    ] {
        let (status, body) = get(vec![("api-version", "2022-07-31"), (option, value)]).await;
        assert_eq!(status, 400, "{option}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(option), "{message}");
        assert!(message.contains("2022-10-31-preview"), "{message}");
    }
    // Paging is every list's.
    let (status, body) = get(vec![("api-version", "2022-07-31"), ("maxpagesize", "1")]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&body), ["g1"]);
    assert!(body["nextLink"].is_string(), "{body}");

    let preview = ("api-version", "2022-10-31-preview");
    let (status, body) = get(vec![preview, ("filter", "contains(displayName, 'Beta')")]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&body), ["g2"]);
    let (status, body) = get(vec![preview, ("orderby", "displayName desc")]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&body), ["g2", "g1"]);
}

/// Follows `nextLink` from `first` to the last page: the devices' display names in order, and
/// every link handed out.
async fn walk(
    http: &reqwest::Client,
    first: reqwest::RequestBuilder,
) -> (Vec<String>, Vec<String>) {
    let mut names = Vec::new();
    let mut links = Vec::new();
    let mut request = first;
    loop {
        let r = request.send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let body: Value = r.json().await.unwrap();
        for d in body["value"].as_array().unwrap() {
            names.push(d["displayName"].as_str().unwrap().to_string());
        }
        match body["nextLink"].as_str() {
            None => return (names, links),
            Some(l) => {
                assert!(links.len() < 20, "paging does not end: {links:?}");
                links.push(l.to_string());
                request = http.get(l);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_list_filters_and_orders_across_pages() {
    let dir = data_dir().unwrap();
    let server = Server::start(dir.path()).unwrap();
    server.wait_ready().await.unwrap();
    let http = muster_tests::http();
    // id, displayName, enabled
    let devices = [
        ("d01", "Thermostat G", true),
        ("d02", "Sensor A", true),
        ("d03", "Thermostat C", true),
        ("d04", "Thermostat E", false),
        ("d05", "thermostat lower", true),
        ("d06", "Thermostat A", true),
        ("d07", "Thermostat F", true),
        ("d08", "Thermostat B", true),
    ];
    for (id, name, enabled) in devices {
        let r = http
            .put(format!("{}/api/devices/{id}?api-version=2022-07-31", server.rest))
            .json(&json!({"displayName": name, "template": "dtmi:contoso:Thermostat;1", "enabled": enabled}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    }
    let list = format!("{}/api/devices", server.rest);
    let filter = "contains(displayName, 'Thermostat') and enabled eq true";

    // Filtered and sorted by displayName, descending, two per page.
    let (names, links) = walk(
        &http,
        http.get(&list).query(&[
            ("api-version", "2022-07-31"),
            ("filter", filter),
            ("orderby", "displayName desc"),
            ("maxpagesize", "2"),
        ]),
    )
    .await;
    assert_eq!(
        names,
        [
            "Thermostat G",
            "Thermostat F",
            "Thermostat C",
            "Thermostat B",
            "Thermostat A"
        ]
    );
    assert_eq!(links.len(), 2, "{links:?}");
    for l in &links {
        assert!(l.contains("filter=contains%28displayName"), "{l}");
        assert!(l.contains("orderby=displayName%20desc"), "{l}");
        assert!(l.contains("maxpagesize=2"), "{l}");
        assert!(l.contains("api-version=2022-07-31"), "{l}");
    }

    // Ascending is the default direction.
    let (names, _) = walk(
        &http,
        http.get(&list).query(&[
            ("api-version", "2022-07-31"),
            ("filter", filter),
            ("orderby", "displayName"),
            ("maxpagesize", "3"),
        ]),
    )
    .await;
    assert_eq!(
        names,
        [
            "Thermostat A",
            "Thermostat B",
            "Thermostat C",
            "Thermostat F",
            "Thermostat G"
        ]
    );

    // Filtered without orderby: id order, paged.
    let (names, links) = walk(
        &http,
        http.get(&list).query(&[
            ("api-version", "2022-07-31"),
            (
                "filter",
                "id ge 'd03' and (enabled eq false or displayName eq 'Thermostat A')",
            ),
            ("maxpagesize", "1"),
        ]),
    )
    .await;
    assert_eq!(names, ["Thermostat E", "Thermostat A"]);
    assert_eq!(links.len(), 1);

    // The reference's field spelling `Enabled` and `ne`.
    let (names, _) = walk(
        &http,
        http.get(&list)
            .query(&[("api-version", "2022-07-31"), ("filter", "Enabled ne true")]),
    )
    .await;
    assert_eq!(names, ["Thermostat E"]);

    // `top` caps the whole list across pages; the nextLink carries what is left of it.
    let (names, links) = walk(
        &http,
        http.get(&list).query(&[
            ("api-version", "2022-07-31"),
            ("top", "3"),
            ("maxpagesize", "2"),
        ]),
    )
    .await;
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(links.len(), 1, "{links:?}");
    assert!(links[0].contains("top=1"), "{links:?}");

    // What muster cannot evaluate: a 400 in IoT Central's error shape naming it.
    for (param, value, named) in [
        ("filter", "scopes eq 'redmond'", "scopes"),
        ("filter", "color eq 'red'", "color"),
        ("filter", "startswith(displayName, 'T')", "startswith"),
        ("filter", "enabled eq 'yes'", "enabled"),
        ("orderby", "id", "displayName"),
    ] {
        let r = http
            .get(&list)
            .query(&[("api-version", "2022-07-31"), (param, value)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{param}={value}");
        let body: Value = r.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(&format!("{param}: ")), "{message}");
        assert!(message.contains(named), "{message}");
        assert!(body["error"]["code"].is_string(), "{body}");
    }

    // Jobs have no filter in the reference: refused, not ignored.
    for route in ["/api/jobs"] {
        for param in ["filter", "orderby"] {
            let r = http
                .get(format!("{}{route}", server.rest))
                .query(&[("api-version", "2022-07-31"), (param, "displayName")])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 400, "{route}?{param}");
            let body: Value = r.json().await.unwrap();
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains("defines no"), "{message}");
        }
    }
}
