#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use proptest::prelude::*;
use serde_json::json;

fn twin() -> Value {
    json!({
        "deviceId": "dev-1",
        "$template": "dtmi:x:y;1",
        "modelId": "dtmi:x:y;1",
        "status": "enabled",
        "connectionState": "Connected",
        "displayName": "Boiler room sensor",
        "tags": {
            "location": {"building": 43, "region": "us"},
            "ring": null,
            "weight": 1.0,
            "big": u64::MAX,
            "online": true,
            "list": [1, 2],
            "my key": "spaced",
            "odd": "[a], b]"
        },
        "properties": {
            "desired": {"fw": "1.0"},
            "reported": {"fw": "0.9", "temp": 21.5, "$metadata": {"x": 1}}
        },
        "cloudProperties": {"owner": "ops"}
    })
}

fn parse(text: &str) -> Query {
    match Query::parse(text) {
        Ok(query) => query,
        Err(err) => panic!("`{text}` should parse, got: {err}"),
    }
}

/// Whether `SELECT * FROM devices WHERE <condition>` matches the test twin.
fn matches(condition: &str) -> bool {
    parse(&format!("SELECT * FROM devices WHERE {condition}")).matches(&twin())
}

/// The error message for a query that must be rejected.
fn error(text: &str) -> String {
    match Query::parse(text) {
        Ok(query) => panic!("`{text}` should be rejected, parsed as {query:?}"),
        Err(err) => err.to_string(),
    }
}

fn where_error(condition: &str) -> String {
    error(&format!("SELECT * FROM devices WHERE {condition}"))
}

fn assert_contains(message: &str, fragments: &[&str]) {
    for fragment in fragments {
        assert!(
            message.contains(fragment),
            "message {message:?} should contain {fragment:?}"
        );
    }
}

// --- shape -----------------------------------------------------------

#[test]
fn select_without_where_matches_everything() {
    let query = parse("SELECT * FROM devices");
    assert!(query.matches(&twin()));
    assert!(query.matches(&json!({})));
    assert!(query.matches(&json!(null)));
}

#[test]
fn keywords_and_source_are_case_insensitive() {
    assert!(parse("select * from DEVICES where deviceId = 'dev-1'").matches(&twin()));
    assert!(
        parse("SeLeCt * FrOm Devices WhErE deviceId = 'dev-1' AnD NoT status = 'x'")
            .matches(&twin())
    );
    assert!(parse("  SELECT * FROM devices ;  ").matches(&twin()));
}

#[test]
fn text_is_kept_verbatim() {
    let text = "  select *\n  from devices where tags.location.region IN ['us']  ";
    assert_eq!(parse(text).text(), text);
}

#[test]
fn queries_compare_equal_by_content() {
    assert_eq!(
        parse("SELECT * FROM devices"),
        parse("SELECT * FROM devices")
    );
    assert_ne!(
        parse("SELECT * FROM devices"),
        parse("select * from devices")
    );
}

#[test]
fn where_true_and_false() {
    assert!(matches("true"));
    assert!(!matches("false"));
    assert!(matches("NOT false"));
}

// --- comparison operators ----------------------------------------------

#[test]
fn equality_and_inequality() {
    assert!(matches("deviceId = 'dev-1'"));
    assert!(!matches("deviceId = 'dev-2'"));
    assert!(!matches("deviceId = 'DEV-1'"), "strings compare exactly");
    assert!(matches("deviceId != 'dev-2'"));
    assert!(matches("deviceId <> 'dev-2'"));
    assert!(!matches("deviceId != 'dev-1'"));
    assert!(!matches("deviceId <> 'dev-1'"));
    assert!(matches("tags.online = true"));
    assert!(!matches("tags.online = false"));
    assert!(matches("tags.online != false"));
}

#[test]
fn numeric_ordering() {
    assert!(matches("tags.location.building > 42"));
    assert!(!matches("tags.location.building > 43"));
    assert!(matches("tags.location.building >= 43"));
    assert!(matches("tags.location.building < 43.5"));
    assert!(!matches("tags.location.building < 43"));
    assert!(matches("tags.location.building <= 43"));
    assert!(matches("properties.reported.temp > -10"));
    assert!(matches("properties.reported.temp < 2.16e1"));
    assert!(!matches("properties.reported.temp < 2.15e1"));
}

#[test]
fn string_ordering_is_lexicographic() {
    assert!(matches("properties.reported.fw < properties.desired.fw"));
    assert!(matches("status > 'a'"));
    assert!(matches("status >= 'enabled'"));
    assert!(matches("status <= 'enabled'"));
    assert!(!matches("status < 'enabled'"));
    assert!(matches("'10' < '9'"), "strings are not compared as numbers");
}

#[test]
fn numbers_compare_by_value() {
    assert!(matches("tags.location.building = 43.0"));
    assert!(matches("tags.weight = 1"));
    assert!(matches("tags.weight = 1.0"));
    assert!(matches("tags.weight = 1e0"));
    assert!(matches("1 = 1.0"));
    assert!(matches("-1 < 0"));
    assert!(matches("-0.5 < 0"));
    assert!(matches("+2 = 2"));
    assert!(matches("1e3 = 1000"));
    assert!(matches("tags.big = 18446744073709551615"));
    assert!(!matches("tags.big = 18446744073709551614"));
    assert!(matches("tags.big > 18446744073709551614"));
    assert!(matches("-9223372036854775808 < 0"));
}

#[test]
fn literals_on_either_side() {
    assert!(matches("'us' = tags.location.region"));
    assert!(matches("43 <= tags.location.building"));
    assert!(!matches("44 <= tags.location.building"));
    assert!(matches("1 = 1"));
    assert!(!matches("1 = 2"));
    assert!(matches("'a' != 'b'"));
    assert!(matches("null = null"));
}

#[test]
fn double_quoted_strings_are_literals() {
    assert!(matches("deviceId = \"dev-1\""));
    assert!(matches("tags.location.region IN [\"eu\", \"us\"]"));
}

#[test]
fn quoted_path_segments_and_escaped_quotes() {
    assert!(matches("tags.\"my key\" = 'spaced'"));
    assert!(matches("tags.odd = '[a], b]'"));
    let doc = json!({"tags": {"name": "it's"}});
    assert!(parse("SELECT * FROM devices WHERE tags.name = 'it''s'").matches(&doc));
}

#[test]
fn path_segments_are_case_sensitive() {
    assert!(!matches("tags.Location.region = 'us'"));
    assert!(!matches("IS_DEFINED(tags.location.Region)"));
}

#[test]
fn reported_metadata_keys_are_reachable() {
    assert!(matches("properties.reported.$metadata.x = 1"));
}

#[test]
fn null_values() {
    assert!(matches("tags.ring = null"));
    assert!(
        !matches("tags.ring = 'canary'"),
        "null is not equal to a string"
    );
    assert!(matches("tags.ring != 'canary'"));
    assert!(!matches("tags.ring < 'a'"), "null is unordered");
    assert!(!matches("NOT tags.ring < 'a'"));
    assert!(!matches("deviceId = null"));
    assert!(matches("deviceId != null"));
}

#[test]
fn mixed_types_are_unequal_and_unordered() {
    assert!(!matches("tags.location.building = '43'"));
    assert!(matches("tags.location.building != '43'"));
    assert!(!matches("tags.location.building > 'a'"));
    assert!(!matches("NOT tags.location.building > 'a'"));
    assert!(!matches("tags.online > false"));
    assert!(!matches("NOT tags.online > false"));
}

#[test]
fn objects_and_arrays_do_not_compare() {
    assert!(!matches("tags.location = 1"));
    assert!(!matches("tags.location != 1"));
    assert!(!matches("tags.list = 1"));
    assert!(!matches("NOT tags.list = 1"));
    assert!(!matches("tags.list IN [1, 2]"));
    assert!(!matches("tags.list NOT IN [1, 2]"));
}

// --- logic and three-valued semantics ----------------------------------

#[test]
fn and_or_not_and_parentheses() {
    assert!(matches("deviceId = 'dev-1' AND status = 'enabled'"));
    assert!(!matches("deviceId = 'dev-1' AND status = 'disabled'"));
    assert!(matches("deviceId = 'dev-2' OR status = 'enabled'"));
    assert!(!matches("deviceId = 'dev-2' OR status = 'disabled'"));
    assert!(matches("NOT deviceId = 'dev-2'"));
    assert!(matches("NOT (deviceId = 'dev-2')"));
    // AND binds tighter than OR ...
    assert!(matches(
        "deviceId = 'dev-1' OR status = 'x' AND status = 'y'"
    ));
    // ... unless parentheses say otherwise.
    assert!(!matches(
        "(deviceId = 'dev-1' OR status = 'x') AND status = 'y'"
    ));
    assert!(matches("((((deviceId = 'dev-1'))))"));
    assert!(matches("NOT NOT deviceId = 'dev-1'"));
}

#[test]
fn missing_paths_are_unknown() {
    // Neither the comparison nor its negation matches.
    assert!(!matches("tags.missing = 1"));
    assert!(!matches("tags.missing != 1"));
    assert!(!matches("NOT tags.missing = 1"));
    assert!(!matches("NOT (tags.missing = 1)"));
    assert!(!matches("tags.missing > 1"));
    assert!(!matches("NOT tags.missing > 1"));
    assert!(!matches("1 = tags.missing"));
    assert!(!matches("tags.location.building.deeper = 1"));
    assert!(!matches("deviceId = tags.missing"));
}

#[test]
fn kleene_logic() {
    let unknown = "tags.missing = 1";
    let t = "deviceId = 'dev-1'";
    let f = "deviceId = 'dev-2'";
    // OR: true wins over unknown; unknown OR false is unknown.
    assert!(matches(&format!("{unknown} OR {t}")));
    assert!(matches(&format!("{t} OR {unknown}")));
    assert!(!matches(&format!("{unknown} OR {f}")));
    assert!(!matches(&format!("NOT ({unknown} OR {f})")));
    // AND: false wins over unknown; unknown AND true is unknown.
    assert!(!matches(&format!("{unknown} AND {t}")));
    assert!(!matches(&format!("NOT ({unknown} AND {t})")));
    assert!(matches(&format!("NOT ({unknown} AND {f})")));
    assert!(matches(&format!("NOT ({f} AND {unknown})")));
}

#[test]
fn missing_paths_on_other_documents() {
    let query = parse("SELECT * FROM devices WHERE tags.location.region = 'us'");
    assert!(!query.matches(&json!({})));
    assert!(!query.matches(&json!(null)));
    assert!(!query.matches(&json!([1, 2])));
    assert!(!query.matches(&json!({"tags": "not an object"})));
    assert!(!query.matches(&json!({"tags": {"location": ["us"]}})));
    assert!(query.matches(&json!({"tags": {"location": {"region": "us"}}})));
}

// --- IN ----------------------------------------------------------------

#[test]
fn in_with_brackets_and_parentheses() {
    assert!(matches("tags.location.region IN ['eu', 'us']"));
    assert!(matches("tags.location.region in ['us']"));
    assert!(matches("tags.location.region IN ('eu', 'us')"));
    assert!(!matches("tags.location.region IN ['eu', 'asia']"));
    assert!(matches("tags.location.building IN [1, 43.0, 'x']"));
    assert!(matches("tags.location.region IN[ 'us' ]"));
    assert!(matches("tags.location.region IN /* note */ ['us']"));
    assert!(matches("tags.location.region IN ['[', ']', 'us']"));
    assert!(matches("'us' IN [tags.location.region, deviceId]"));
    assert!(matches("tags.location.region IN [('us')]"));
}

#[test]
fn not_in() {
    assert!(matches("tags.location.region NOT IN ['eu', 'asia']"));
    assert!(!matches("tags.location.region NOT IN ['eu', 'us']"));
    assert!(matches("tags.location.region NOT IN ('eu')"));
    assert!(matches("NOT tags.location.region IN ['eu']"));
}

#[test]
fn in_with_missing_values_is_unknown() {
    assert!(!matches("tags.missing IN ['us']"));
    assert!(!matches("tags.missing NOT IN ['us']"));
    // An unknown element only matters when nothing else is equal.
    assert!(matches("tags.location.region IN [tags.missing, 'us']"));
    assert!(!matches("tags.location.region IN [tags.missing, 'eu']"));
    assert!(!matches("tags.location.region NOT IN [tags.missing, 'eu']"));
}

#[test]
fn in_with_nested_brackets_and_parens() {
    assert!(matches(
        "(tags.location.region IN ['us'] AND (deviceId IN ('dev-1')))"
    ));
}

// --- IS_DEFINED --------------------------------------------------------

#[test]
fn is_defined() {
    assert!(matches("IS_DEFINED(tags.location)"));
    assert!(matches("IS_DEFINED(tags.location.region)"));
    assert!(matches("is_defined(deviceId)"));
    assert!(matches("Is_Defined(cloudProperties.owner)"));
    assert!(matches("IS_DEFINED(tags.ring)"), "null is defined");
    assert!(matches("IS_DEFINED(tags)"));
    assert!(matches("IS_DEFINED(properties.reported)"));
    assert!(!matches("IS_DEFINED(tags.missing)"));
    assert!(!matches("IS_DEFINED(tags.location.region.deeper)"));
    assert!(matches("NOT IS_DEFINED(tags.missing)"));
    assert!(!matches("NOT IS_DEFINED(tags.location)"));
    assert!(matches("IS_DEFINED((tags.location))"));
    assert!(matches("NOT IS_DEFINED(tags.missing) OR tags.missing = 1"));
    assert!(!parse("SELECT * FROM devices WHERE IS_DEFINED(tags.x)").matches(&json!({})));
}

// --- $template ---------------------------------------------------------

#[test]
fn template_path() {
    assert!(matches("$template = 'dtmi:x:y;1'"));
    assert!(matches("$template IN ['dtmi:x:y;1', 'dtmi:x:y;2']"));
    assert!(!matches("$template = 'dtmi:x:y;2'"));
    assert!(matches("IS_DEFINED($template)"));
    assert!(matches("$template = modelId"));
    assert!(!parse("SELECT * FROM devices WHERE $template = 'a'").matches(&json!({})));
    assert!(!parse("SELECT * FROM devices WHERE IS_DEFINED($template)").matches(&json!({})));
}

#[test]
fn every_documented_root_resolves() {
    assert!(matches("deviceId = 'dev-1'"));
    assert!(matches("modelId = 'dtmi:x:y;1'"));
    assert!(matches("status = 'enabled'"));
    assert!(matches("connectionState = 'Connected'"));
    assert!(matches("displayName = 'Boiler room sensor'"));
    assert!(matches("properties.desired.fw = '1.0'"));
    assert!(matches("properties.reported.fw = '0.9'"));
    assert!(matches("cloudProperties.owner = 'ops'"));
}

#[test]
fn long_flat_chains_are_not_nesting() {
    let condition = vec!["deviceId = 'dev-1'"; 300].join(" AND ");
    assert!(matches(&condition));
    let condition = vec!["deviceId = 'x'"; 300].join(" OR ") + " OR status = 'enabled'";
    assert!(matches(&condition));
}

#[test]
fn moderate_nesting_is_accepted() {
    let depth = 30;
    let condition = format!(
        "{}deviceId = 'dev-1'{}",
        "(".repeat(depth),
        ")".repeat(depth)
    );
    assert!(matches(&condition));
    let condition = format!("{}deviceId = 'dev-1'", "NOT ".repeat(30));
    assert!(matches(&condition));
}

// --- errors ------------------------------------------------------------

#[test]
fn empty_queries_are_rejected() {
    for text in [
        "",
        "   ",
        "\n\t",
        ";",
        " ; ; ",
        "-- just a comment",
        "/* nothing */",
    ] {
        let message = error(text);
        assert_contains(&message, &["empty", "SELECT * FROM devices"]);
    }
}

#[test]
fn malformed_queries_pass_the_parser_message_along() {
    let message = error("SELECT * FROM devices WHERE");
    assert_contains(
        &message,
        &["malformed query", "Expected", "SELECT * FROM devices"],
    );
    let message = error("SELECT * FROM devices WHERE deviceId = ");
    assert_contains(&message, &["malformed query", "expression"]);
    let message = error("SELECT * FROM devices WHERE (deviceId = 'x'");
    assert_contains(&message, &["malformed query"]);
    let message = error("devices where x = 1");
    assert_contains(&message, &["malformed query", "SELECT * FROM devices"]);
    let message = error("SELECT * FROM devices WHERE deviceId = 'unterminated");
    assert_contains(&message, &["malformed query", "Unterminated"]);
    let message = error("SELECT * FROM devices WHERE x IN []");
    assert_contains(&message, &["malformed query"]);
    let message = error("SELECT * FROM devices WHERE deviceId = 'a' status = 'b'");
    assert_contains(&message, &["malformed query", "Line: 1"]);
}

#[test]
fn mismatched_in_brackets_are_rejected() {
    let message = where_error("deviceId IN ['a', 'b')");
    assert_contains(&message, &["`[`", "`)`", "column"]);
    let message = where_error("deviceId IN ('a', 'b']");
    assert_contains(&message, &["`(`", "`]`"]);
}

#[test]
fn other_sources_are_rejected() {
    let message = error("SELECT * FROM modules");
    assert_contains(&message, &["unsupported source `modules`", "FROM devices"]);
    let message = error("SELECT * FROM devices.modules");
    assert_contains(&message, &["unsupported source"]);
    let message = error("SELECT * FROM devices JOIN jobs ON devices.id = jobs.id");
    assert_contains(&message, &["JOIN is not supported"]);
    let message = error("SELECT * FROM devices, jobs");
    assert_contains(&message, &["several sources"]);
    let message = error("SELECT * FROM devices d");
    assert_contains(&message, &["alias"]);
    let message = error("SELECT * FROM (SELECT * FROM devices)");
    assert_contains(&message, &["subquery"]);
    let message = error("SELECT *");
    assert_contains(&message, &["missing `FROM devices`"]);
}

#[test]
fn unsupported_clauses_are_named() {
    let cases = [
        ("SELECT * FROM devices GROUP BY status", "GROUP BY"),
        ("SELECT * FROM devices ORDER BY deviceId", "ORDER BY"),
        ("SELECT * FROM devices LIMIT 10", "LIMIT"),
        ("SELECT TOP 10 * FROM devices", "TOP"),
        ("SELECT DISTINCT * FROM devices", "DISTINCT"),
        ("SELECT deviceId FROM devices", "only `SELECT *`"),
        ("SELECT *, deviceId FROM devices", "only `SELECT *`"),
        ("SELECT COUNT(*) FROM devices", "only `SELECT *`"),
        ("SELECT * FROM devices UNION SELECT * FROM devices", "UNION"),
        (
            "WITH d AS (SELECT * FROM devices) SELECT * FROM devices",
            "WITH",
        ),
        (
            "SELECT * FROM devices GROUP BY status HAVING 1 = 1",
            "GROUP BY",
        ),
        (
            "SELECT * EXCEPT (deviceId) FROM devices",
            "unsupported query form",
        ),
        ("DELETE FROM devices", "found `DELETE FROM devices`"),
        ("UPDATE devices SET status = 'x'", "only queries"),
    ];
    for (text, fragment) in cases {
        let message = error(text);
        assert_contains(&message, &[fragment]);
    }
}

#[test]
fn multiple_statements_are_rejected() {
    let message = error("SELECT * FROM devices; SELECT * FROM devices");
    assert_contains(&message, &["2 statements", "exactly one"]);
    let message = error("SELECT * FROM devices; DROP TABLE devices");
    assert_contains(&message, &["2 statements"]);
}

#[test]
fn unsupported_operators_are_rejected() {
    let cases = [
        ("deviceId LIKE 'dev-%'", "LIKE is not supported"),
        ("deviceId ILIKE 'dev-%'", "LIKE is not supported"),
        ("tags.location.building + 1 = 44", "arithmetic"),
        ("tags.location.building = 40 + 3", "arithmetic"),
        ("tags.location.building * 2 > 1", "arithmetic"),
        ("-tags.location.building < 0", "arithmetic"),
        ("tags.location.building BETWEEN 1 AND 50", "BETWEEN"),
        ("tags.ring IS NULL", "IS NULL"),
        ("tags.ring IS NOT NULL", "IS_DEFINED"),
        ("deviceId IN (SELECT deviceId FROM devices)", "subquery"),
        ("EXISTS (SELECT * FROM devices)", "subquery"),
        ("deviceId = (SELECT 1)", "expected a path"),
        ("deviceId || 'x' = 'y'", "arithmetic"),
        (
            "deviceId = 'a' XOR status",
            "operator `XOR` is not supported",
        ),
        ("deviceId = 'a' XOR status = 'b'", "expected a path"),
    ];
    for (condition, fragment) in cases {
        let message = where_error(condition);
        assert_contains(&message, &[fragment]);
    }
    let message = where_error("deviceId LIKE 'dev-%'");
    assert_contains(
        &message,
        &["`deviceId LIKE 'dev-%'`", "line 1, column 29", "IS_DEFINED"],
    );
}

#[test]
fn unsupported_functions_are_rejected() {
    let message = where_error("STARTSWITH(deviceId, 'dev')");
    assert_contains(
        &message,
        &["unsupported function `STARTSWITH`", "IS_DEFINED(path)"],
    );
    let message = where_error("LOWER(deviceId) = 'dev-1'");
    assert_contains(&message, &["functions cannot be used as values"]);
    let message = where_error("IS_DEFINED('tags')");
    assert_contains(&message, &["IS_DEFINED takes exactly one path"]);
    let message = where_error("IS_DEFINED(tags.a, tags.b)");
    assert_contains(&message, &["IS_DEFINED takes exactly one path"]);
    let message = where_error("IS_DEFINED()");
    assert_contains(&message, &["IS_DEFINED takes exactly one path"]);
    let message = where_error("IS_DEFINED(*)");
    assert_contains(&message, &["IS_DEFINED takes exactly one path"]);
    let message = where_error("IS_DEFINED(DISTINCT tags.a)");
    assert_contains(&message, &["IS_DEFINED takes exactly one path"]);
    let message = where_error("IS_DEFINED(foo.bar)");
    assert_contains(&message, &["unknown field `foo`"]);
}

#[test]
fn unknown_roots_are_rejected_with_the_allowed_list() {
    let message = where_error("foo.bar = 1");
    assert_contains(
        &message,
        &[
            "unknown field `foo` in path `foo.bar`",
            "line 1, column 29",
            "deviceId",
            "$template",
            "tags.",
            "properties.desired.",
            "properties.reported.",
            "cloudProperties.",
        ],
    );
    let message = where_error("DeviceId = 'dev-1'");
    assert_contains(&message, &["did you mean `deviceId`?"]);
    let message = where_error("'x' = region");
    assert_contains(&message, &["unknown field `region`"]);
    let message = where_error("$foo = 1");
    assert_contains(&message, &["unknown field `$foo`"]);
}

#[test]
fn invalid_paths_below_known_roots_are_rejected() {
    let message = where_error("properties.fw = '1.0'");
    assert_contains(&message, &["`.desired` or `.reported`"]);
    let message = where_error("deviceId.x = 1");
    assert_contains(&message, &["`deviceId` is a single value"]);
    let message = where_error("$template.x = 1");
    assert_contains(&message, &["`$template` is a single value"]);
    let message = where_error("tags.list[0] = 1");
    assert_contains(&message, &["indexing with [...]"]);
}

#[test]
fn values_are_not_conditions() {
    let message = where_error("tags.online");
    assert_contains(
        &message,
        &["is a value, not a condition", "tags.online = true"],
    );
    let message = where_error("deviceId = 'a' AND 'b'");
    assert_contains(&message, &["is a value, not a condition"]);
    let message = where_error("null");
    assert_contains(&message, &["not a condition"]);
    let message = where_error("(deviceId = 'a') = true");
    assert_contains(&message, &["expected a path"]);
}

#[test]
fn unsupported_literals_are_rejected() {
    let message = where_error("deviceId = X'1F'");
    assert_contains(&message, &["unsupported literal"]);
    let message = where_error("tags.location.building = 1e999");
    assert_contains(&message, &["out-of-range number"]);
    let message = where_error("deviceId = ?");
    assert_contains(&message, &["unsupported literal"]);
    let message = where_error("deviceId = [1, 2]");
    assert_contains(&message, &["an array value is not supported"]);
}

#[test]
fn overly_long_queries_are_rejected_before_parsing() {
    let filler = "x".repeat(MAX_QUERY_LEN);
    let message = error(&format!(
        "SELECT * FROM devices WHERE deviceId = '{filler}'"
    ));
    assert_contains(&message, &["too long", "8192"]);
    // Right at the limit is fine.
    let prefix = "SELECT * FROM devices WHERE deviceId = '";
    let padding = "x".repeat(MAX_QUERY_LEN - prefix.len() - 1);
    let text = format!("{prefix}{padding}'");
    assert_eq!(text.len(), MAX_QUERY_LEN);
    assert!(Query::parse(&text).is_ok());
}

#[test]
fn deep_nesting_is_rejected_without_overflowing() {
    for depth in [65, 100, 1000, 4000] {
        let text = format!(
            "SELECT * FROM devices WHERE {}deviceId = 'dev-1'{}",
            "(".repeat(depth),
            ")".repeat(depth)
        );
        assert_contains(&error(&text), &["nested too deeply"]);
    }
    let text = format!(
        "SELECT * FROM devices WHERE {}deviceId = 'x'",
        "NOT ".repeat(500)
    );
    assert_contains(&error(&text), &["nested too deeply"]);
    let text = format!(
        "SELECT * FROM devices WHERE deviceId IN {}'x'{}",
        "[".repeat(2000),
        "]".repeat(2000)
    );
    assert!(Query::parse(&text).is_err());
    // Prefix operators and other nestable syntax the token check does
    // not count are still bounded by the parser's own recursion limit.
    for prefix in [
        "- ",
        "+ ",
        "~ ",
        "{",
        "CASE WHEN ",
        "CAST(",
        "ARRAY[",
        "EXISTS (",
    ] {
        let text = format!("SELECT * FROM devices WHERE {}1 = 1", prefix.repeat(2000));
        assert!(Query::parse(&text).is_err(), "{prefix}");
    }
    // Alternating AND/OR in parentheses really is nesting.
    let mut condition = String::from("deviceId = 'x'");
    for i in 0..200 {
        let op = if i % 2 == 0 { "AND" } else { "OR" };
        condition = format!("(deviceId = 'x' {op} {condition})");
    }
    assert_contains(&where_error(&condition), &["nested too deeply"]);
}

#[test]
fn errors_are_displayed_as_their_message() {
    let err = Query::parse("").unwrap_err();
    assert_eq!(err.to_string(), err.message());
}

// --- property tests ----------------------------------------------------

/// Arbitrary JSON, biased towards the keys the generated queries use.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        prop::sample::select(vec!["us", "eu", "dev-1", "", "1.0"]).prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec!["a", "b", "region", "fw", "x"]).prop_map(String::from),
                inner,
                0..4
            )
            .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

fn twin_doc() -> impl Strategy<Value = Value> {
    (
        json_value(),
        json_value(),
        json_value(),
        json_value(),
        prop::option::of(json_value()),
    )
        .prop_map(|(tags, desired, reported, cloud, device_id)| {
            let mut doc = json!({
                "tags": tags,
                "properties": {"desired": desired, "reported": reported},
                "cloudProperties": cloud,
                "$template": "dtmi:x:y;1",
            });
            if let (Some(id), Some(object)) = (device_id, doc.as_object_mut()) {
                object.insert("deviceId".into(), id);
            }
            doc
        })
}

fn path_text() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "deviceId",
        "$template",
        "tags",
        "tags.a",
        "tags.a.b",
        "tags.region",
        "properties.desired.fw",
        "properties.reported.x",
        "properties.reported.a.region",
        "cloudProperties.b",
    ])
    .prop_map(String::from)
}

fn literal_text() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "'us'",
        "'eu'",
        "''",
        "\"dev-1\"",
        "1",
        "1.0",
        "-3",
        "2.5e3",
        "true",
        "false",
        "null",
        "18446744073709551615",
    ])
    .prop_map(String::from)
}

fn operand_text() -> impl Strategy<Value = String> {
    prop_oneof![path_text(), literal_text()]
}

/// Random *valid* conditions.
fn condition_text() -> impl Strategy<Value = String> {
    let op = prop::sample::select(vec!["=", "!=", "<>", "<", ">", "<=", ">="]);
    let leaf = prop_oneof![
        (operand_text(), op, operand_text()).prop_map(|(l, op, r)| format!("{l} {op} {r}")),
        path_text().prop_map(|p| format!("IS_DEFINED({p})")),
        (
            operand_text(),
            any::<bool>(),
            any::<bool>(),
            prop::collection::vec(operand_text(), 1..4)
        )
            .prop_map(|(needle, negated, brackets, list)| {
                let not = if negated { "NOT " } else { "" };
                let (open, close) = if brackets { ("[", "]") } else { ("(", ")") };
                format!("{needle} {not}IN {open}{}{close}", list.join(", "))
            }),
    ];
    leaf.prop_recursive(4, 32, 3, |inner| {
        prop_oneof![
            inner.clone().prop_map(|c| format!("NOT ({c})")),
            inner.clone().prop_map(|c| format!("({c})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} AND {b}")),
            (inner.clone(), inner).prop_map(|(a, b)| format!("{a} OR {b}")),
        ]
    })
}

/// Soup of query-ish tokens, to reach deeper than random bytes do.
fn token_soup() -> impl Strategy<Value = String> {
    let token = prop::sample::select(vec![
        "SELECT",
        "*",
        "FROM",
        "devices",
        "WHERE",
        "AND",
        "OR",
        "NOT",
        "IN",
        "[",
        "]",
        "(",
        ")",
        ",",
        "=",
        "!=",
        "<",
        ">=",
        "IS_DEFINED",
        "tags.a",
        "$template",
        "'x'",
        "\"y\"",
        "1",
        "-",
        "1.5",
        "null",
        "true",
        ";",
        ".",
        "$",
        "'",
        "LIKE",
        "+",
        "?",
        "::",
        "[0]",
        "SELECT * FROM devices WHERE",
    ]);
    prop::collection::vec(token, 0..24).prop_map(|tokens| tokens.join(" "))
}

proptest! {
    #[test]
    fn parse_never_panics_on_arbitrary_text(text in any::<String>()) {
        let _ = Query::parse(&text);
    }

    #[test]
    fn parse_never_panics_on_token_soup(soup in token_soup(), doc in twin_doc()) {
        if let Ok(query) = Query::parse(&soup) {
            let _ = query.matches(&doc);
        }
        if let Ok(query) = Query::parse(&format!("SELECT * FROM devices WHERE {soup}")) {
            let _ = query.matches(&doc);
        }
        // Whole statements (`POST /devices/query`): projections, aggregates, `devices.jobs`.
        let _ = Statement::parse(&soup);
        let _ = Statement::parse(&format!("SELECT {soup} FROM devices"));
        let _ = Statement::parse(&format!("SELECT TOP 3 * FROM devices.jobs WHERE {soup}"));
        let _ = Statement::parse(&format!(
            "SELECT properties.reported.fw AS fw, COUNT() AS n FROM devices GROUP BY {soup}"
        ));
    }

    #[test]
    fn statements_never_panic_on_arbitrary_text(text in any::<String>()) {
        let _ = Statement::parse(&text);
    }

    #[test]
    fn valid_conditions_parse_and_evaluate(condition in condition_text(), doc in twin_doc()) {
        let query = Query::parse(&format!("SELECT * FROM devices WHERE {condition}"));
        prop_assert!(query.is_ok(), "{condition}: {:?}", query.err());
        let negated = Query::parse(&format!("SELECT * FROM devices WHERE NOT ({condition})"));
        prop_assert!(negated.is_ok());
        if let (Ok(query), Ok(negated)) = (query, negated) {
            // Three-valued logic: a condition and its negation never both hold.
            prop_assert!(!(query.matches(&doc) && negated.matches(&doc)));
            prop_assert_eq!(query.text(), format!("SELECT * FROM devices WHERE {condition}"));
        }
    }

    #[test]
    fn is_defined_is_never_unknown(path in path_text(), doc in twin_doc()) {
        let defined = Query::parse(&format!("SELECT * FROM devices WHERE IS_DEFINED({path})"));
        let undefined = Query::parse(&format!("SELECT * FROM devices WHERE NOT IS_DEFINED({path})"));
        prop_assert!(defined.is_ok() && undefined.is_ok());
        if let (Ok(defined), Ok(undefined)) = (defined, undefined) {
            prop_assert!(defined.matches(&doc) != undefined.matches(&doc));
        }
    }
}

// --- the full statement (POST /devices/query) ------------------------------

fn statement(text: &str) -> Statement {
    match Statement::parse(text) {
        Ok(statement) => statement,
        Err(err) => panic!("`{text}` should parse, got: {err}"),
    }
}

fn statement_error(text: &str) -> String {
    match Statement::parse(text) {
        Ok(statement) => panic!("`{text}` should be rejected, parsed as {statement:?}"),
        Err(err) => err.to_string(),
    }
}

#[test]
fn statements_name_their_source_and_shape() {
    let s = statement("SELECT * FROM devices WHERE tags.location.region = 'us'");
    assert_eq!(s.source(), Source::Devices);
    assert!(s.selects_documents() && !s.is_aggregate() && s.top().is_none());
    assert!(s.matches(&twin()));
    let s = statement("select top 5 * from DEVICES.JOBS where devices.jobs.jobId = 'j1'");
    assert_eq!(s.source(), Source::DeviceJobs);
    assert_eq!(s.top(), Some(5));
    assert!(s.matches(&json!({"jobId": "j1"})));
    assert!(!s.matches(&json!({"jobId": "j2"})));
    let s = statement("SELECT * FROM devices.jobs WHERE status = 'failed' AND outcome.deviceMethodResponse.status = 500");
    assert!(s.matches(
        &json!({"status": "failed", "outcome": {"deviceMethodResponse": {"status": 500}}})
    ));
    let s = statement("SELECT COUNT() AS n FROM devices");
    assert!(s.is_aggregate() && !s.selects_documents());
}

#[test]
fn projections_name_columns_by_last_segment_or_alias() {
    let s = statement(
        "SELECT deviceId, properties.reported.fw, tags.location.region AS r, $template FROM devices",
    );
    assert_eq!(
        s.project(&twin()),
        json!({"deviceId": "dev-1", "fw": "0.9", "r": "us", "$template": "dtmi:x:y;1"})
    );
    // A path the document lacks is left out of the row.
    let s = statement("SELECT deviceId, tags.nothing FROM devices");
    assert_eq!(s.project(&twin()), json!({"deviceId": "dev-1"}));
}

#[test]
fn statement_errors_say_what_to_fix() {
    let cases = [
        (
            "SELECT deviceId, tags.deviceId FROM devices",
            "two columns are named `deviceId`",
        ),
        ("SELECT *, deviceId FROM devices", "cannot be combined"),
        ("SELECT SUM(tags.x) FROM devices", "COUNT()"),
        ("SELECT COUNT(deviceId) FROM devices", "write `COUNT()`"),
        (
            "SELECT deviceId, COUNT() FROM devices",
            "neither grouped nor aggregated",
        ),
        (
            "SELECT tags.a, COUNT() FROM devices GROUP BY tags.b",
            "add it to GROUP BY",
        ),
        ("SELECT * FROM devices GROUP BY tags.a", "cannot be grouped"),
        ("SELECT TOP 0 * FROM devices", "TOP n"),
        ("SELECT TOP 10 PERCENT * FROM devices", "TOP n"),
        ("SELECT * FROM devices LIMIT 3", "SELECT TOP n"),
        ("SELECT * FROM devices ORDER BY deviceId", "ORDER BY"),
        (
            "SELECT * FROM devices.modules",
            "FROM devices or FROM devices.jobs",
        ),
        (
            "SELECT * FROM devices.jobs WHERE tags.a = 1",
            "only the job's fields",
        ),
        (
            "SELECT * FROM devices.jobs WHERE devices.jobs.jobid = 'x'",
            "did you mean `jobId`",
        ),
        ("SELECT jobId FROM devices.jobs", "returns whole rows"),
        ("SELECT COUNT() FROM devices.jobs", "returns whole rows"),
        ("SELECT 'x' FROM devices", "found the value"),
        ("SELECT * FROM devices GROUP BY ALL", "GROUP BY <path>"),
        ("", "empty"),
    ];
    for (text, fragment) in cases {
        assert_contains(&statement_error(text), &[fragment]);
    }
}

#[test]
fn job_targets_still_take_only_select_star() {
    // The full language is for queries; a job's target stays `SELECT * FROM devices WHERE ...`.
    assert_contains(&error("SELECT TOP 3 * FROM devices"), &["TOP"]);
    assert_contains(
        &error("SELECT * FROM devices.jobs"),
        &["unsupported source"],
    );
}
