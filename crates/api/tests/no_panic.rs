#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! No input panics a parser: arbitrary text, and arbitrary JSON built from the shapes' own field
//! names and values so that the deep paths are reached. Every refusal is a 400 or a 413.

use muster_api::central::*;
use muster_api::hub::*;
use muster_api::methods::{command_from_central, method_from_hub};
use muster_api::ApiError;
use proptest::prelude::*;
use serde_json::{Map, Value};

const KEYS: &[&str] = &[
    "id",
    "displayName",
    "description",
    "group",
    "batch",
    "cancellationThreshold",
    "data",
    "status",
    "type",
    "value",
    "target",
    "path",
    "jobId",
    "cloudToDeviceMethod",
    "methodName",
    "payload",
    "timeoutInSeconds",
    "responseTimeoutInSeconds",
    "connectTimeoutInSeconds",
    "updateTwin",
    "tags",
    "properties",
    "desired",
    "reported",
    "queryCondition",
    "deviceIds",
    "startTime",
    "maxExecutionTimeInSeconds",
    "filter",
    "template",
    "enabled",
    "simulated",
    "$version",
    "deviceId",
    "authentication",
    "symmetricKey",
    "primaryKey",
    "secondaryKey",
    "capabilities",
    "iotEdge",
    "statusReason",
    "request",
    "responseTimeout",
    "connectionTimeout",
    "etag",
    "x y",
];

const STRINGS: &[&str] = &[
    "percentage",
    "number",
    "PropertyJobData",
    "CommandJobData",
    "CloudPropertyJobData",
    "scheduleDeviceMethod",
    "scheduleDirectRequest",
    "scheduleUpdateTwin",
    "scheduleTwinUpdate",
    "833d7a7d-8f99-4e04-9e56-745806bdba6e",
    "dtmi:modelDefinition:zomtmdxh:eqod32zbyl",
    "targetTemperature",
    "job-1",
    "d1",
    "2021-06-15T05:00:00.000Z",
    "9999-99-99T99:99:99Z",
    "tags.x = 1",
    "SELECT * FROM devices",
    "SELECT",
    "select\u{e9}",
    "",
    "*",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1.0e20f64..1.0e20).prop_map(Value::from),
        (0usize..STRINGS.len()).prop_map(|i| Value::String(STRINGS[i].to_string())),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(((0usize..KEYS.len()), inner), 0..6).prop_map(|kv| {
                let mut m = Map::new();
                for (k, v) in kv {
                    m.insert(KEYS[k].to_string(), v);
                }
                Value::Object(m)
            }),
        ]
    })
}

fn ok_or_client_error<T>(r: Result<T, ApiError>) -> Result<(), TestCaseError> {
    if let Err(e) = r {
        prop_assert!(e.status == 400 || e.status == 413, "{e:?}");
        prop_assert!(!e.message.is_empty());
        let body = e.body();
        prop_assert!(body["error"]["code"].is_string());
    }
    Ok(())
}

fn all_parsers(body: &str, id: &str) -> Result<(), TestCaseError> {
    ok_or_client_error(job_request_from_central(body, id))?;
    ok_or_client_error(device_group_from_central(body, id))?;
    ok_or_client_error(device_registration_from_central(body, id))?;
    ok_or_client_error(job_spec_from_hub(body, id))?;
    ok_or_client_error(twin_patch_from_hub(body))?;
    ok_or_client_error(twin_replace_from_hub(body))?;
    ok_or_client_error(device_identity_from_hub(body, id))?;
    ok_or_client_error(device_patch_from_central(body, id))?;
    ok_or_client_error(properties_from_central(body, true))?;
    ok_or_client_error(properties_from_central(body, false))?;
    ok_or_client_error(method_from_hub(body))?;
    ok_or_client_error(command_from_central(body, id))?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics(body in "\\PC{0,200}", id in "\\PC{0,20}") {
        all_parsers(&body, &id)?;
    }

    #[test]
    fn arbitrary_json_never_panics(v in json_value(), id in prop_oneof![Just("job-1".to_string()), "\\PC{0,10}"]) {
        all_parsers(&v.to_string(), &id)?;
    }

    #[test]
    fn arbitrary_json_objects_with_shape_keys_never_panic(
        kv in prop::collection::vec(((0usize..KEYS.len()), json_value()), 0..10)
    ) {
        let mut m = Map::new();
        for (k, v) in kv {
            m.insert(KEYS[k].to_string(), v);
        }
        all_parsers(&Value::Object(m).to_string(), "job-1")?;
    }

    #[test]
    fn query_helpers_never_panic(a in "\\PC{0,20}", b in "\\PC{0,20}") {
        let _ = check_api_version(Some(&a), CENTRAL_API_VERSIONS);
        let _ = HubJobFilter::from_query(Some(&a), Some(&b));
        let _ = page_size(Some(&a), 10, 100);
        let _ = etag_version(Some(&a));
        let _ = next_link(&a, &b, "preview", Some(&a));
    }
}

#[test]
fn deeply_nested_json_is_refused_without_overflow() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let e = job_spec_from_central(&deep, "job-1").unwrap_err();
    assert_eq!(e.status, 400);
    let deep_obj = format!(
        "{{\"group\": \"g\", \"data\": [{{\"type\": \"PropertyJobData\", \"path\": \"p\", \"value\": {}1{}}}]}}",
        "{\"a\":".repeat(120),
        "}".repeat(120)
    );
    let e = job_spec_from_central(&deep_obj, "job-1").unwrap_err();
    assert_eq!(e.status, 400, "{e:?}");
}
