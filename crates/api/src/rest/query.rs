//! IoT Hub's `POST /devices/query` (the service REST reference's "Query - Get Twins").
//!
//! The body is `{"query": "<statement>"}` (see [`muster_domain::query::Statement`] for the
//! language: `SELECT [TOP n] * | paths [AS name] | COUNT() FROM devices | devices.jobs [WHERE]
//! [GROUP BY]`). The answer is a JSON **array** of rows, as the reference's `Twin[]`, with two
//! response headers the SDKs read:
//!
//! * `x-ms-item-type`: `twin` for `SELECT * FROM devices` (each row rendered like
//!   `GET /twins/{id}`), `deviceJob` for `FROM devices.jobs`, `raw` for projections and
//!   aggregates;
//! * `x-ms-continuation`: present when more rows follow; the client sends it back in the
//!   `x-ms-continuation` request header with the same query.
//!
//! The page size is the `x-ms-max-item-count` request header: a whole number >= 1, default 100;
//! larger than 1000 is served as 1000 (the reference lets the service pick another size when the
//! one asked for is not acceptable). The continuation is opaque (base64 of where the page ended),
//! valid only with the query that made it.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::Response;
use muster_domain::auth::Permission;
use muster_domain::query::{Cursor, Row, Source, Statement};
use serde_json::Value;

use super::errors::internal;
use super::extract::{JsonText, Params};
use super::guard::Routes;
use super::hub::CONTINUATION;
use super::{ok_json, App};
use crate::access::Access::Need;
use crate::central::check_api_version;
use crate::error::ApiError;
use crate::hub::{hub_twin_json, HUB_API_VERSIONS};
use crate::json::{parse_body, Fields};

/// IoT Hub's page-size request header.
pub(super) const MAX_ITEM_COUNT: HeaderName = HeaderName::from_static("x-ms-max-item-count");
/// IoT Hub's response header naming what the rows are.
const ITEM_TYPE: HeaderName = HeaderName::from_static("x-ms-item-type");
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

pub(super) fn routes() -> Routes {
    Routes::new().post(
        "/devices/query",
        Need(Permission::DevicesRead),
        query_devices,
    )
}

/// Reads `x-ms-max-item-count`: absent or empty gives the default; more than [`MAX_PAGE`] is
/// served as [`MAX_PAGE`]; anything but a whole number >= 1 is a 400.
pub(super) fn max_item_count(headers: &HeaderMap, default: usize) -> Result<usize, ApiError> {
    let Some(raw) = headers.get(&MAX_ITEM_COUNT) else {
        return Ok(default);
    };
    let text = raw.to_str().unwrap_or("").trim();
    if text.is_empty() {
        return Ok(default);
    }
    match text.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(usize::try_from(n).unwrap_or(MAX_PAGE).min(MAX_PAGE)),
        _ => Err(ApiError::bad_request(
            "x-ms-max-item-count",
            format!(
                "must be a whole number of at least 1 (at most {MAX_PAGE} are served per page), got {}",
                crate::json::quote(text)
            ),
        )),
    }
}

async fn query_devices(
    State(app): State<App>,
    q: Params,
    headers: HeaderMap,
    JsonText(body): JsonText,
) -> Result<Response, ApiError> {
    check_api_version(q.get("api-version"), HUB_API_VERSIONS)?;
    let value = parse_body(&body)?;
    let fields = Fields::of(&value, "")?;
    fields.only(&["query"])?;
    let text = fields.str_req("query")?;
    let statement = Statement::parse(text).map_err(|e| ApiError::bad_request("query", e))?;
    let size = max_item_count(&headers, DEFAULT_PAGE)?;
    let cursor = match headers.get(&CONTINUATION) {
        None => None,
        Some(raw) => {
            let token = raw.to_str().unwrap_or("").trim();
            if token.is_empty() {
                None
            } else {
                Some(
                    Cursor::decode(token, text)
                        .map_err(|e| ApiError::bad_request("x-ms-continuation", e))?,
                )
            }
        }
    };
    let (items, next) = app
        .read_cold(|s, cold| {
            statement.page(s, cold, cursor.as_ref(), size).map(|page| {
                let items: Vec<Value> = page
                    .rows
                    .into_iter()
                    .map(|row| match row {
                        Row::Twin(device) => hub_twin_json(device),
                        Row::Document(doc) => doc,
                    })
                    .collect();
                (items, page.next)
            })
        })
        .await?
        .map_err(|e| ApiError::bad_request("x-ms-continuation", e))?;
    let item_type = match (statement.source(), statement.selects_documents()) {
        (Source::Devices, true) => "twin",
        (Source::DeviceJobs, true) => "deviceJob",
        (_, false) => "raw",
    };
    let mut resp = ok_json(Value::Array(items));
    resp.headers_mut()
        .insert(ITEM_TYPE, HeaderValue::from_static(item_type));
    if let Some(next) = next {
        // URL-safe base64: always a valid header value.
        let value = HeaderValue::from_str(&next.encode(text)).map_err(|e| internal(&e))?;
        resp.headers_mut().insert(CONTINUATION, value);
    }
    Ok(resp)
}
