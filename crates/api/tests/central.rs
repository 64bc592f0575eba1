#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The IoT Central shape against the first seed's own JSON samples.

use muster_api::central::*;
use muster_api::ApiError;
use muster_domain::*;
use muster_types::{DeviceId, GroupId, JobId, Timestamp};
use serde_json::{json, Value};

const TEMPLATE: &str = "dtmi:modelDefinition:zomtmdxh:eqod32zbyl";
const GROUP: &str = "833d7a7d-8f99-4e04-9e56-745806bdba6e";

/// The seed's PUT /api/jobs/job-006 request body, verbatim.
const SEED_PUT: &str = r#"{
  "displayName": "Set target temperature",
  "description": "Set target temperature device property",
  "group": "833d7a7d-8f99-4e04-9e56-745806bdba6e",
  "batch": {
    "type": "percentage",
    "value": 25
  },
  "cancellationThreshold": {
    "type": "percentage",
    "value": 10,
    "batch": false
  },
  "data": [
    {
      "type": "PropertyJobData",
      "target": "dtmi:modelDefinition:zomtmdxh:eqod32zbyl",
      "path": "targetTemperature",
      "value": "55"
    }
  ]
}"#;

/// The seed's response to that PUT, verbatim.
const SEED_PUT_RESPONSE: &str = r#"{
  "id": "job-006",
  "displayName": "Set target temperature",
  "description": "Set target temperature device property",
  "group": "833d7a7d-8f99-4e04-9e56-745806bdba6e",
  "batch": {
    "type": "percentage",
    "value": 25
  },
  "cancellationThreshold": {
    "type": "percentage",
    "value": 10,
    "batch": false
  },
  "data": [
    {
      "type": "PropertyJobData",
      "target": "dtmi:modelDefinition:zomtmdxh:eqod32zbyl",
      "path": "targetTemperature",
      "value": "55"
    }
  ],
  "status": "pending"
}"#;

/// The seed's GET /api/jobs list, verbatim.
const SEED_LIST: &str = r#"{
  "value": [
    {
      "id": "job-006",
      "displayName": "Set customer name",
      "description": "Set the customer name cloud property",
      "group": "4fcbec3b-5ee8-4324-855d-0f03b56bcf7f",
      "data": [
        {
          "type": "CloudPropertyJobData",
          "target": "dtmi:modelDefinition:bojo9tfju:yfvu5gv2vl",
          "path": "CustomerName",
          "value": "Contoso"
        }
      ],
      "status": "complete"
    },
    {
      "id": "job-005",
      "displayName": "Set target temperature",
      "description": "Set target temperature device property",
      "group": "833d7a7d-8f99-4e04-9e56-745806bdba6e",
      "data": [
        {
          "type": "PropertyJobData",
          "target": "dtmi:modelDefinition:zomtmdxh:eqod32zbyl",
          "path": "targetTemperature",
          "value": 56
        }
      ],
      "status": "complete"
    },
    {
      "id": "job-004",
      "displayName": "Run device report",
      "description": "Call command to run the device reports",
      "group": "833d7a7d-8f99-4e04-9e56-745806bdba6e",
      "batch": {
        "type": "percentage",
        "value": 25
      },
      "cancellationThreshold": {
        "type": "percentage",
        "value": 10,
        "batch": false
      },
      "data": [
        {
          "type": "CommandJobData",
          "target": "dtmi:modelDefinition:zomtmdxh:eqod32zbyl",
          "path": "getMaxMinReport",
          "value": "2021-06-15T05:00:00.000Z"
        }
      ],
      "status": "complete"
    }
  ]
}"#;

/// The seed's GET /api/jobs/job-004/devices response, verbatim.
const SEED_DEVICES: &str = r#"{
  "value": [
    {
      "id": "therm-01",
      "status": "completed"
    },
    {
      "id": "therm-02",
      "status": "completed"
    },
    {
      "id": "therm-03",
      "status": "completed"
    },
    {
      "id": "therm-04",
      "status": "completed"
    }
  ]
}"#;

fn now() -> Timestamp {
    Timestamp::parse_rfc3339("2021-06-15T05:00:00Z").unwrap()
}

/// A state with four thermostats of the seed's template, therm-01..04, in the seed's group.
fn fleet(group: &str, template: &str) -> State {
    let mut s = State::default();
    let devices = (1..=4)
        .map(|i| DeviceRegistration {
            id: DeviceId::new(format!("therm-{i:02}")).unwrap(),
            display_name: format!("Thermostat {i}"),
            model_id: Some(template.to_string()),
            enabled: true,
            tags: json!({}).into(),
        })
        .collect();
    s.execute(&Command::RegisterDevices {
        devices,
        upsert: false,
        at: now(),
    })
    .unwrap();
    s.execute(&Command::SaveGroup {
        id: GroupId::new(group).unwrap(),
        display_name: "Thermostats".into(),
        description: String::new(),
        query: format!("SELECT * FROM devices WHERE $template = '{template}'"),
        if_version: None,
        at: now(),
    })
    .unwrap();
    s
}

fn create(s: &mut State, id: &JobId, spec: JobSpec) -> Job {
    s.execute(&Command::CreateJob {
        id: id.clone(),
        spec,
        at: now(),
    })
    .unwrap();
    s.jobs[id].clone()
}

fn bad(body: &str, id: &str) -> ApiError {
    match job_spec_from_central(body, id) {
        Err(e) => e,
        Ok(spec) => panic!("accepted {body}: {spec:?}"),
    }
}

/// Asserts a 400 whose message names `field`.
fn assert_field(e: &ApiError, field: &str) {
    assert_eq!(e.status, 400, "{e:?}");
    assert_eq!(e.code, "InvalidInput", "{e:?}");
    assert!(
        e.message.starts_with(&format!("{field}: ")),
        "expected field {field} in {:?}",
        e.message
    );
}

fn with(patch: Value) -> String {
    let mut v: Value = serde_json::from_str(SEED_PUT).unwrap();
    merge(&mut v, patch);
    v.to_string()
}

/// Like a merge patch, but `"$delete"` removes a key.
fn merge(v: &mut Value, patch: Value) {
    if let (Value::Object(m), Value::Object(p)) = (v, patch) {
        for (k, pv) in p {
            if pv == json!("$delete") {
                m.remove(&k);
            } else if pv.is_object() && m.get(&k).is_some_and(Value::is_object) {
                merge(m.get_mut(&k).unwrap(), pv);
            } else {
                m.insert(k, pv);
            }
        }
    }
}

#[test]
fn seed_put_body_parses_to_the_expected_spec() {
    let req = job_request_from_central(SEED_PUT, "job-006").unwrap();
    assert_eq!(req.id.as_str(), "job-006");
    assert_eq!(req.template.as_deref(), Some(TEMPLATE));
    let expected = JobSpec {
        display_name: "Set target temperature".into(),
        description: "Set target temperature device property".into(),
        target: Target {
            selector: TargetSelector::Group(GroupId::new(GROUP).unwrap()),
            continuous: false,
        },
        operations: vec![Operation::PatchDesired {
            patch: json!({"targetTemperature": "55"}),
        }],
        schedule: Schedule::default(),
        rollout: Rollout {
            batch: Some(BatchSize::Percentage(25)),
            max_devices_per_minute: None,
            ..Default::default()
        },
        cancellation: Some(CancellationThreshold {
            limit: Threshold::Percentage(10),
            per_batch: false,
        }),
        retry: RetryPolicy::default(),
    };
    assert_eq!(req.spec, expected);
    let (id, spec) = job_spec_from_central(SEED_PUT, "job-006").unwrap();
    assert_eq!((id, spec), (req.id, req.spec));
}

#[test]
fn seed_put_response_is_rendered_byte_for_byte() {
    let mut s = fleet(GROUP, TEMPLATE);
    let req = job_request_from_central(SEED_PUT, "job-006").unwrap();
    let job = create(&mut s, &req.id, req.spec);
    let rendered = central_job_json(&job, req.template.as_deref());
    let expected: Value = serde_json::from_str(SEED_PUT_RESPONSE).unwrap();
    assert_eq!(rendered, expected);
    // Same keys in the same order, so the pretty-printed text is the seed's text.
    assert_eq!(
        serde_json::to_string_pretty(&rendered).unwrap(),
        SEED_PUT_RESPONSE
    );
    // The template can be recovered later from the job's devices.
    assert_eq!(
        job_template(&job, &s.registry, &muster_domain::NoColdRows),
        Some(TEMPLATE)
    );
}

#[test]
fn seed_list_items_parse_and_render_back_exactly() {
    let list: Value = serde_json::from_str(SEED_LIST).unwrap();
    let mut rendered = Vec::new();
    for item in list["value"].as_array().unwrap() {
        let id = item["id"].as_str().unwrap();
        let group = item["group"].as_str().unwrap();
        let template = item["data"][0]["target"].as_str().unwrap();
        // The GET body, status included, is accepted as a PUT body.
        let req = job_request_from_central(&item.to_string(), id).unwrap();
        assert_eq!(req.template.as_deref(), Some(template));
        let mut s = fleet(group, template);
        let mut job = create(&mut s, &req.id, req.spec);
        job.status = JobStatus::Completed;
        rendered.push(central_job_json(
            &job,
            job_template(&job, &s.registry, &muster_domain::NoColdRows),
        ));
    }
    assert_eq!(central_page(rendered, None), list);
}

#[test]
fn seed_data_types_map_to_operations() {
    let list: Value = serde_json::from_str(SEED_LIST).unwrap();
    let specs: Vec<JobSpec> = list["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            job_spec_from_central(&item.to_string(), item["id"].as_str().unwrap())
                .unwrap()
                .1
        })
        .collect();
    assert_eq!(
        specs[0].operations,
        vec![Operation::SetCloudProperty {
            name: "CustomerName".into(),
            value: json!("Contoso")
        }]
    );
    assert_eq!(
        specs[1].operations,
        vec![Operation::PatchDesired {
            patch: json!({"targetTemperature": 56})
        }]
    );
    assert_eq!(
        specs[2].operations,
        vec![Operation::InvokeMethod(MethodCall {
            name: "getMaxMinReport".into(),
            payload: json!("2021-06-15T05:00:00.000Z"),
            response_timeout_secs: COMMAND_RESPONSE_TIMEOUT_SECS,
            connect_timeout_secs: COMMAND_CONNECT_TIMEOUT_SECS,
        })]
    );
    assert_eq!(
        (COMMAND_RESPONSE_TIMEOUT_SECS, COMMAND_CONNECT_TIMEOUT_SECS),
        (30, 0)
    );
    assert_eq!(specs[0].rollout.batch, None);
    assert_eq!(specs[0].cancellation, None);
}

#[test]
fn seed_job_payload_sample_with_id_and_status_parses() {
    let sample = r#"{
      "id": "job-014",
      "displayName": "Set target temperature",
      "description": "Set target temperature for all thermostat devices",
      "group": "833d7a7d-8f99-4e04-9e56-745806bdba6e",
      "batch": {"type": "percentage", "value": 25},
      "cancellationThreshold": {"type": "percentage", "value": 10, "batch": false},
      "data": [{"type": "PropertyJobData", "target": "dtmi:modelDefinition:zomtmdxh:eqod32zbyl",
                "path": "targetTemperature", "value": "56"}],
      "status": "complete"
    }"#;
    let (id, spec) = job_spec_from_central(sample, "job-014").unwrap();
    assert_eq!(id.as_str(), "job-014");
    assert_eq!(spec.display_name, "Set target temperature");
}

#[test]
fn seed_device_listing_is_rendered_exactly() {
    let mut s = fleet(GROUP, TEMPLATE);
    let req = job_request_from_central(SEED_PUT, "job-004").unwrap();
    let mut job = create(&mut s, &req.id, req.spec);
    for d in &mut job.runs[0].devices {
        d.status = DeviceStatus::Succeeded;
    }
    let items = job
        .current_run()
        .devices
        .iter()
        .map(central_job_device_json)
        .collect();
    let expected: Value = serde_json::from_str(SEED_DEVICES).unwrap();
    assert_eq!(central_page(items, None), expected);
}

#[test]
fn statuses_map_as_iot_central_names_them() {
    let cases = [
        (JobStatus::Scheduled, "pending"),
        (JobStatus::Pending, "pending"),
        (JobStatus::Running, "running"),
        (JobStatus::Stopped, "stopped"),
        (JobStatus::Completed, "complete"),
        (JobStatus::Failed, "failed"),
        (JobStatus::Cancelled, "cancelled"),
    ];
    for (s, name) in cases {
        assert_eq!(central_status(s), name);
    }
    let devices = [
        (DeviceStatus::Pending, "pending"),
        (DeviceStatus::Running, "running"),
        (DeviceStatus::Succeeded, "completed"),
        (DeviceStatus::Failed, "failed"),
        (DeviceStatus::TimedOut, "failed"),
        (DeviceStatus::Cancelled, "cancelled"),
    ];
    for (s, name) in devices {
        assert_eq!(central_device_status(s), name);
    }
}

#[test]
fn number_batches_and_per_batch_thresholds_round_trip() {
    let body = with(json!({
        "batch": {"type": "number", "value": 3},
        "cancellationThreshold": {"type": "number", "value": 2, "batch": true}
    }));
    let req = job_request_from_central(&body, "job-7").unwrap();
    assert_eq!(req.spec.rollout.batch, Some(BatchSize::Count(3)));
    assert_eq!(
        req.spec.cancellation,
        Some(CancellationThreshold {
            limit: Threshold::Count(2),
            per_batch: true
        })
    );
    let mut s = fleet(GROUP, TEMPLATE);
    let job = create(&mut s, &req.id, req.spec);
    let out = central_job_json(&job, None);
    assert_eq!(out["batch"], json!({"type": "number", "value": 3}));
    assert_eq!(
        out["cancellationThreshold"],
        json!({"type": "number", "value": 2, "batch": true})
    );
    // Without a template, target is left out rather than invented.
    assert!(out["data"][0].get("target").is_none());
}

#[test]
fn optional_fields_have_documented_defaults() {
    let body = json!({
        "group": GROUP,
        "data": [{"type": "CommandJobData", "path": "reboot"}]
    })
    .to_string();
    let req = job_request_from_central(&body, "job-1").unwrap();
    assert_eq!(req.spec.display_name, "job-1");
    assert_eq!(req.spec.description, "");
    assert_eq!(req.template, None);
    assert_eq!(
        req.spec.operations,
        vec![Operation::InvokeMethod(MethodCall {
            name: "reboot".into(),
            payload: Value::Null,
            response_timeout_secs: 30,
            connect_timeout_secs: 0,
        })]
    );
}

#[test]
fn bad_inputs_name_the_field() {
    let cases: Vec<(String, &str, &str)> = vec![
        // Unknown data type.
        (
            with(json!({"data": [{"type": "FooJobData", "path": "p", "value": 1}]})),
            "job-1",
            "data[0].type",
        ),
        (
            with(json!({"data": [{"type": 3, "path": "p", "value": 1}]})),
            "job-1",
            "data[0].type",
        ),
        (
            with(json!({"data": [{"path": "p", "value": 1}]})),
            "job-1",
            "data[0].type",
        ),
        (
            with(json!({"data": [
                {"type": "PropertyJobData", "path": "a", "value": 1},
                {"type": "Nope", "path": "b", "value": 1}
            ]})),
            "job-1",
            "data[1].type",
        ),
        // Batch percentage out of range, negative, fractional, a string, unknown type.
        (
            with(json!({"batch": {"type": "percentage", "value": 0}})),
            "job-1",
            "batch.value",
        ),
        (
            with(json!({"batch": {"type": "percentage", "value": 101}})),
            "job-1",
            "batch.value",
        ),
        (
            with(json!({"batch": {"type": "percentage", "value": -5}})),
            "job-1",
            "batch.value",
        ),
        (
            with(json!({"batch": {"type": "percentage", "value": 2.5}})),
            "job-1",
            "batch.value",
        ),
        (
            with(json!({"batch": {"type": "percentage", "value": "25"}})),
            "job-1",
            "batch.value",
        ),
        (
            with(json!({"batch": {"type": "number", "value": 0}})),
            "job-1",
            "batch.value",
        ),
        (
            with(json!({"batch": {"type": "number", "value": "$delete"}})),
            "job-1",
            "batch.value",
        ),
        (
            with(json!({"batch": {"type": "percent", "value": 5}})),
            "job-1",
            "batch.type",
        ),
        (with(json!({"batch": 25})), "job-1", "batch"),
        (
            with(json!({"cancellationThreshold": {"type": "percentage", "value": 0}})),
            "job-1",
            "cancellationThreshold.value",
        ),
        (
            with(json!({"cancellationThreshold": {"type": "percentage", "value": 101}})),
            "job-1",
            "cancellationThreshold.value",
        ),
        (
            with(json!({"cancellationThreshold": {"batch": "no"}})),
            "job-1",
            "cancellationThreshold.batch",
        ),
        (
            with(json!({"cancellationThreshold": {"type": "all", "value": 1}})),
            "job-1",
            "cancellationThreshold.type",
        ),
        // Wrong id in the body; an invalid id in the URL.
        (with(json!({"id": "job-007"})), "job-006", "id"),
        (with(json!({"id": 6})), "job-006", "id"),
        (SEED_PUT.to_string(), "job/006", "id"),
        (SEED_PUT.to_string(), "", "id"),
        // Missing or bad group.
        (with(json!({"group": "$delete"})), "job-1", "group"),
        (with(json!({"group": null})), "job-1", "group"),
        (with(json!({"group": 42})), "job-1", "group"),
        (with(json!({"group": "a b"})), "job-1", "group"),
        // Wrong types.
        (with(json!({"displayName": 5})), "job-1", "displayName"),
        (
            with(json!({"displayName": "two\nlines"})),
            "job-1",
            "displayName",
        ),
        (
            with(json!({"displayName": "x".repeat(300)})),
            "job-1",
            "displayName",
        ),
        (with(json!({"description": ["x"]})), "job-1", "description"),
        (with(json!({"status": 1})), "job-1", "status"),
        (with(json!({"data": "$delete"})), "job-1", "data"),
        (with(json!({"data": []})), "job-1", "data"),
        (
            with(json!({"data": {"type": "PropertyJobData"}})),
            "job-1",
            "data",
        ),
        (
            with(json!({"data": ["PropertyJobData"]})),
            "job-1",
            "data[0]",
        ),
        (
            with(json!({"data": [{"type": "PropertyJobData", "path": "p"}]})),
            "job-1",
            "data[0].value",
        ),
        (
            with(json!({"data": [{"type": "CloudPropertyJobData", "path": "p"}]})),
            "job-1",
            "data[0].value",
        ),
        (
            with(json!({"data": [{"type": "PropertyJobData", "value": 1}]})),
            "job-1",
            "data[0].path",
        ),
        (
            with(json!({"data": [{"type": "PropertyJobData", "path": "a/b", "value": 1}]})),
            "job-1",
            "data[0].path",
        ),
        (
            with(json!({"data": [{"type": "CommandJobData", "path": ""}]})),
            "job-1",
            "data[0].path",
        ),
        (
            with(
                json!({"data": [{"type": "PropertyJobData", "path": "p", "value": {"bad key": 1}}]}),
            ),
            "job-1",
            "data[0].value",
        ),
        (
            with(
                json!({"data": [{"type": "PropertyJobData", "target": "", "path": "p", "value": 1}]}),
            ),
            "job-1",
            "data[0].target",
        ),
        (
            with(json!({"data": [
                {"type": "PropertyJobData", "target": "dtmi:a;1", "path": "p", "value": 1},
                {"type": "PropertyJobData", "target": "dtmi:b;1", "path": "q", "value": 1}
            ]})),
            "job-1",
            "data[1].target",
        ),
        (
            with(
                json!({"data": [{"type": "PropertyJobData", "path": "p", "value": 1, "extra": 1}]}),
            ),
            "job-1",
            "data[0].extra",
        ),
        // Unknown top-level field.
        (
            with(json!({"scheduleOptions": {"start": "x"}})),
            "job-1",
            "scheduleOptions",
        ),
        // Not an object / malformed JSON.
        ("[1, 2]".to_string(), "job-1", "body"),
        ("\"job\"".to_string(), "job-1", "body"),
        ("{\"group\": ".to_string(), "job-1", "body"),
        ("{group: 'x'}".to_string(), "job-1", "body"),
        ("".to_string(), "job-1", "body"),
    ];
    for (body, id, field) in cases {
        let e = bad(&body, id);
        assert_field(&e, field);
    }
}

#[test]
fn too_many_operations_and_oversized_bodies() {
    let items: Vec<Value> = (0..17)
        .map(|i| json!({"type": "PropertyJobData", "path": format!("p{i}"), "value": i}))
        .collect();
    assert_field(&bad(&with(json!({ "data": items })), "job-1"), "data");

    let big = "x".repeat(muster_api::MAX_BODY_BYTES);
    let e = bad(&with(json!({"description": big})), "job-1");
    assert_eq!((e.status, e.code), (413, "PayloadTooLarge"));

    // A value larger than the domain allows for a property patch is a 413 naming the value.
    let value = "y".repeat(40 * 1024);
    let e = bad(
        &with(json!({"data": [{"type": "PropertyJobData", "path": "p", "value": value}]})),
        "job-1",
    );
    assert_eq!(e.status, 413);
    assert!(e.message.starts_with("data[0].value is "), "{}", e.message);
}

#[test]
fn api_versions() {
    for v in ["preview", "2022-07-31", "2022-10-31-preview"] {
        assert!(check_api_version(Some(v), CENTRAL_API_VERSIONS).is_ok());
    }
    let e = check_api_version(None, CENTRAL_API_VERSIONS).unwrap_err();
    assert_eq!((e.status, e.code), (400, "MissingApiVersionParameter"));
    assert!(e
        .message
        .contains("preview, 2022-07-31, 2022-10-31-preview"));
    let e = check_api_version(Some(""), CENTRAL_API_VERSIONS).unwrap_err();
    assert_eq!(e.code, "MissingApiVersionParameter");
    let e = check_api_version(Some("1999-01-01"), CENTRAL_API_VERSIONS).unwrap_err();
    assert_eq!((e.status, e.code), (400, "UnsupportedApiVersion"));
    assert!(e.message.contains("\"1999-01-01\""), "{}", e.message);
    assert!(e.message.contains("2022-07-31"), "{}", e.message);
}

#[test]
fn next_links() {
    assert_eq!(
        next_link("https://app.example.com/", "/api/jobs", "2022-07-31", None),
        None
    );
    assert_eq!(
        next_link(
            "https://app.example.com",
            "/api/jobs",
            "2022-07-31",
            Some("job-5/x y")
        )
        .as_deref(),
        Some("https://app.example.com/api/jobs?api-version=2022-07-31&$skiptoken=job-5%2Fx%20y")
    );
    assert_eq!(
        next_link("http://h:8080/", "api/devices", "preview", Some("t")).as_deref(),
        Some("http://h:8080/api/devices?api-version=preview&$skiptoken=t")
    );
    let page = central_page(vec![json!(1)], Some("http://h/next".into()));
    assert_eq!(page, json!({"value": [1], "nextLink": "http://h/next"}));
}

#[test]
fn device_groups() {
    let body = json!({
        "displayName": "Thermostats",
        "filter": "SELECT * FROM devices WHERE $template = \"dtmi:modelDefinition:zomtmdxh:eqod32zbyl\"",
        "description": "all thermostats"
    })
    .to_string();
    let g = device_group_from_central(&body, GROUP).unwrap();
    assert_eq!(g.id.as_str(), GROUP);
    assert_eq!(g.display_name, "Thermostats");

    assert_eq!(g.description, "all thermostats");
    assert_eq!(g.etag, None);

    let mut s = State::default();
    s.execute(&Command::SaveGroup {
        id: g.id.clone(),
        display_name: g.display_name.clone(),
        description: g.description.clone(),
        query: g.filter.clone(),
        if_version: g.etag,
        at: now(),
    })
    .unwrap();
    let out = central_device_group_json(&s.registry.groups[&g.id]);
    assert_eq!(
        out,
        json!({"id": GROUP, "etag": "1", "displayName": "Thermostats", "filter": g.filter,
               "description": "all thermostats"})
    );
    // The reference's order: id, etag, displayName, filter, description.
    let keys: Vec<&String> = out.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["id", "etag", "displayName", "filter", "description"]);

    // A save at a stale etag is refused, at the current one applied.
    let stale = Command::SaveGroup {
        id: g.id.clone(),
        display_name: "Renamed".into(),
        description: String::new(),
        query: g.filter.clone(),
        if_version: Some(7),
        at: now(),
    };
    assert!(matches!(
        s.execute(&stale),
        Err(muster_domain::DomainError::GroupVersionMismatch {
            expected: 7,
            actual: 1,
            ..
        })
    ));
    let body = json!({"displayName": "Renamed", "filter": "SELECT * FROM devices", "etag": "1",
                      "organizations": []})
    .to_string();
    let again = device_group_from_central(&body, GROUP).unwrap();
    assert_eq!(again.etag, Some(1));
    // A patch reads only what it is given.
    let p = device_group_patch_from_central(r#"{"description": "d"}"#, GROUP).unwrap();
    assert_eq!(p.description.as_deref(), Some("d"));
    assert_eq!((p.display_name, p.filter, p.etag), (None, None, None));

    let bad_cases = [
        (
            json!({"displayName": "x", "filter": "SELECT nonsense"}),
            GROUP,
            "filter",
        ),
        (json!({"displayName": "x"}), GROUP, "filter"),
        (
            json!({"filter": "SELECT * FROM devices"}),
            GROUP,
            "displayName",
        ),
        (
            json!({"id": "other", "displayName": "x", "filter": "SELECT * FROM devices"}),
            GROUP,
            "id",
        ),
        (
            json!({"displayName": "x", "filter": "SELECT * FROM devices"}),
            "bad id",
            "id",
        ),
        (
            json!({"displayName": "x", "filter": "SELECT * FROM devices", "owner": 1}),
            GROUP,
            "owner",
        ),
        (
            json!({"displayName": "x", "filter": "SELECT * FROM devices", "organizations": ["seattle"]}),
            GROUP,
            "organizations",
        ),
        (
            json!({"displayName": "x", "filter": "SELECT * FROM devices", "etag": "abc"}),
            GROUP,
            "etag",
        ),
    ];
    for (body, id, field) in bad_cases {
        let e = device_group_from_central(&body.to_string(), id).unwrap_err();
        assert_field(&e, field);
    }
}

#[test]
fn devices() {
    // The body IoT Central's device docs show for PUT /api/devices/{id}.
    let body = r#"{
      "displayName": "CheckoutThermostat",
      "template": "dtmi:contoso:Thermostat;1",
      "simulated": false,
      "enabled": true
    }"#;
    let reg = device_registration_from_central(body, "thermostat1").unwrap();
    assert_eq!(reg.id.as_str(), "thermostat1");
    assert_eq!(reg.display_name, "CheckoutThermostat");
    assert_eq!(reg.model_id.as_deref(), Some("dtmi:contoso:Thermostat;1"));
    assert!(reg.enabled);

    let d = Device::new(&reg, now());
    let out = central_device_json(&d);
    assert_eq!(
        out,
        json!({"id": "thermostat1", "etag": "1", "displayName": "CheckoutThermostat",
               "simulated": false, "provisioned": false,
               "template": "dtmi:contoso:Thermostat;1", "enabled": true})
    );
    // A GET body sent back is accepted.
    assert_eq!(
        device_registration_from_central(&out.to_string(), "thermostat1").unwrap(),
        reg
    );

    let minimal = device_registration_from_central("{}", "d2").unwrap();
    assert_eq!(
        (minimal.display_name.as_str(), minimal.enabled),
        ("d2", true)
    );
    assert_eq!(minimal.model_id, None);
    assert!(central_device_json(&Device::new(&minimal, now()))
        .get("template")
        .is_none());

    let bad_cases = [
        (json!({"enabled": "yes"}), "d1", "enabled"),
        (json!({"template": 5}), "d1", "template"),
        (json!({"template": ""}), "d1", "template"),
        (json!({"simulated": true}), "d1", "simulated"),
        (json!({"id": "d9"}), "d1", "id"),
        (json!({}), "a b", "id"),
        (json!({"tags": {}}), "d1", "tags"),
    ];
    for (body, id, field) in bad_cases {
        let e = device_registration_from_central(&body.to_string(), id).unwrap_err();
        assert_field(&e, field);
    }
}
