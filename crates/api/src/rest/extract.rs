//! Extractors whose every refusal is an [`ApiError`] (JSON, naming what to fix), instead of
//! axum's plain-text rejections: query parameters, path segments, the request body, and the
//! base URL for `nextLink`; and [`Caller`], who the request is from.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use muster_domain::Principal;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::json::MAX_BODY_BYTES;

/// Who the request is from: the [`Principal`] the authentication layer put into the request's
/// extensions, or [`Principal::Anonymous`] when there is none (no authentication in front).
/// The only place the REST edge looks the caller up; every write records it (`App::write`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Caller(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Caller(
            parts
                .extensions
                .get::<Principal>()
                .cloned()
                .unwrap_or(Principal::Anonymous),
        ))
    }
}

/// The query string as `(name, value)` pairs, percent-decoded. Repeated names are allowed; the
/// first one wins (as ASP.NET reads Azure's query strings for single-valued parameters).
#[derive(Debug, Default)]
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    #[cfg(test)]
    pub(crate) fn from_pairs(pairs: &[(&str, &str)]) -> Params {
        Params(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map(|Query(pairs)| Params(pairs))
            .map_err(|e| {
                ApiError::bad_request(
                    "query",
                    format!(
                        "the query string could not be read ({}); percent-encode names and values",
                        e.body_text()
                    ),
                )
            })
    }
}

/// Path parameters, with a 400 naming the path when they cannot be decoded (invalid UTF-8 after
/// percent-decoding). Ids are checked by the handlers, which know the field's name.
#[derive(Debug)]
pub(crate) struct PathParams<T>(pub T);

impl<S, T> FromRequestParts<S> for PathParams<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(t)| PathParams(t))
            .map_err(|e| {
                ApiError::bad_request(
                    "path",
                    format!(
                        "{}; ids in the URL must be UTF-8, percent-encoded where needed",
                        e.body_text()
                    ),
                )
            })
    }
}

/// The request body as text, read up to [`MAX_BODY_BYTES`] (the router's body limit).
///
/// Content types: a missing `Content-Type` and any JSON type (`application/json`, with or
/// without `charset`, `*/*+json`, `text/json`) are read as JSON. Any other type is still read
/// as JSON when the body *is* JSON: `curl -d` sends `application/x-www-form-urlencoded` by
/// default, and refusing a well-formed JSON body over a header would only break scripts. A
/// body that is neither declared nor shaped as JSON is a 415 naming the type to send.
#[derive(Debug)]
pub(crate) struct JsonText(pub String);

impl<S: Send + Sync> FromRequest<S> for JsonText {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let declared = content_type(req.headers());
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    413,
                    "PayloadTooLarge",
                    format!(
                        "the request body is larger than {MAX_BODY_BYTES} bytes; send less data"
                    ),
                )
            } else {
                ApiError::bad_request(
                    "body",
                    format!("the request body could not be read: {}", e.body_text()),
                )
            }
        })?;
        let text = String::from_utf8(bytes.to_vec())
            .map_err(|_| ApiError::bad_request("body", "is not UTF-8 text; send JSON in UTF-8"))?;
        if let Some(ct) = declared {
            if !is_json_type(&ct) && serde_json::from_str::<serde::de::IgnoredAny>(&text).is_err() {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!(
                        "Content-Type {ct:?} is not supported; send a JSON body with Content-Type: application/json"
                    ),
                ));
            }
        }
        Ok(JsonText(text))
    }
}

fn content_type(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::CONTENT_TYPE)?;
    let s = String::from_utf8_lossy(v.as_bytes()).trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn is_json_type(ct: &str) -> bool {
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

/// `http://<Host>` of the request, for `nextLink`: the URL the client used, so following the link
/// reaches the same server. A `Host` header with characters no host name has (an attempt to
/// inject text into the link) is ignored in favour of the URI's authority, then `localhost`.
pub(crate) fn base_url(parts_headers: &HeaderMap, uri: &axum::http::Uri) -> String {
    let valid = |h: &str| {
        !h.is_empty()
            && h.len() <= 255
            && h.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]_".contains(c))
    };
    let host = parts_headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| valid(h))
        .map(str::to_string)
        .or_else(|| {
            uri.authority()
                .map(|a| a.as_str().to_string())
                .filter(|h| valid(h))
        })
        .unwrap_or_else(|| "localhost".to_string());
    // Over TLS the node gives every request an `https` scheme (HTTP/2 has it anyway).
    let scheme = if uri.scheme_str() == Some("https") {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_types() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/merge-patch+json",
            "text/json",
        ] {
            assert!(is_json_type(ok), "{ok}");
        }
        for no in ["text/plain", "application/x-www-form-urlencoded", ""] {
            assert!(!is_json_type(no), "{no}");
        }
    }

    #[test]
    fn base_url_ignores_bad_hosts() {
        let uri: axum::http::Uri = "/api/jobs".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(base_url(&h, &uri), "http://127.0.0.1:8080");
        h.insert(header::HOST, "evil.com/x?y=".parse().unwrap());
        assert_eq!(base_url(&h, &uri), "http://localhost");
        let uri: axum::http::Uri = "https://127.0.0.1:8080/api/jobs".parse().unwrap();
        h.insert(header::HOST, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(base_url(&h, &uri), "https://127.0.0.1:8080");
    }
}
