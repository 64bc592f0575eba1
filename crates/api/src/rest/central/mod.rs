//! IoT Central's routes: `/api/jobs`, `/api/deviceGroups`, `/api/devices`.
//!
//! Every route requires `api-version` (one of [`CENTRAL_API_VERSIONS`]), as IoT Central does.
//! Every list goes through [`ListRequest`] / [`Page`]: `{"value": [...], "nextLink":
//! "http://<Host>/...&$skiptoken=..."}` in id order, `nextLink` absent on the last page;
//! `maxpagesize` (1..=1000, default 100) sets the page size and `top` caps the whole list, both
//! carried in the link with the list's own options (`filter`, `orderby`, see
//! [`crate::central_filter`]). `GET /api/jobs/{id}/events` (muster's own addition) pages through a
//! job's history the same way, its token being the seq the page ended with. Tokens are sealed
//! for their listing ([`muster_domain::page_token`]): route and order, path, filter, status and
//! search; only issued ones are read, and one of another listing is a 400 saying so.
//!
//! The routes: [`jobs`], [`groups`], [`devices`], [`scheduled`].

mod devices;
mod groups;
mod jobs;
mod scheduled;

use std::collections::BTreeMap;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::response::Response;
use muster_domain::page_token;
use muster_types::{DeviceId, GroupId, JobId};
use serde_json::Value;

use super::extract::{base_url, Params};
use super::guard::Routes;
use super::{ok_json, page, path_id, token, App};
use crate::central::{
    central_page, check_api_version, next_link, percent_encode, CENTRAL_API_VERSIONS,
    NEXT_LINK_TOKEN_PARAM,
};
use crate::central_filter;
use crate::error::ApiError;

/// Page size of a list when `maxpagesize` is not given.
const DEFAULT_PAGE: usize = 100;
/// Largest `maxpagesize` accepted.
const MAX_PAGE: usize = 1000;

pub(super) fn routes() -> Routes {
    Routes::new()
        .merge(jobs::routes())
        .merge(groups::routes())
        .merge(devices::routes())
        .merge(scheduled::routes())
}

/// The checked `api-version`, kept for the `nextLink`.
pub(super) fn version(q: &Params) -> Result<String, ApiError> {
    let v = q.get("api-version");
    check_api_version(v, CENTRAL_API_VERSIONS)?;
    Ok(v.unwrap_or_default().to_string())
}

fn job_id(s: &str) -> Result<JobId, ApiError> {
    path_id(s, |s: &str| JobId::new(s), "id", "job id")
}

fn group_id(s: &str) -> Result<GroupId, ApiError> {
    path_id(s, |s: &str| GroupId::new(s), "id", "device group id")
}

fn device_id(s: &str) -> Result<DeviceId, ApiError> {
    path_id(s, |s: &str| DeviceId::new(s), "id", "device id")
}

fn job_not_found(id: &JobId) -> ApiError {
    ApiError::new(
        404,
        "JobNotFound",
        format!("job {id} does not exist; check the id in the URL (GET /api/jobs lists the jobs)"),
    )
}

fn group_not_found(id: &GroupId) -> ApiError {
    ApiError::new(
        404,
        "DeviceGroupNotFound",
        format!("device group {id} does not exist; check the id in the URL (GET /api/deviceGroups lists them)"),
    )
}

fn device_not_found(id: &DeviceId) -> ApiError {
    ApiError::new(
        404,
        "DeviceNotFound",
        format!("device {id} is not registered; check the id in the URL (PUT /api/devices/{{id}} registers one)"),
    )
}

/// `If-Match` with a device's or group's etag makes a write conditional (412 if it changed since).
pub(super) fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let raw = headers
        .get(header::IF_MATCH)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    crate::hub::etag_version(raw.as_deref())
}

/// A Central list request: its query parameters and where it was sent (scheme, host, path),
/// which the `nextLink` repeats.
pub(super) struct ListRequest {
    pub(super) q: Params,
    base: String,
    path: String,
}

impl<S: Send + Sync> FromRequestParts<S> for ListRequest {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let q = Params::from_request_parts(parts, state).await?;
        let base = base_url(&parts.headers, &parts.uri);
        let path = parts.uri.path().to_string();
        Ok(ListRequest { q, base, path })
    }
}

/// One page to answer: its size, the token it continues after, and what the `nextLink` repeats.
pub(super) struct Page<K> {
    version: String,
    /// How many items this page holds at most (`maxpagesize`, capped by what `top` leaves).
    pub(super) size: usize,
    /// `maxpagesize` when given.
    given: Option<usize>,
    /// What is left of `top` before this page, when given.
    top: Option<usize>,
    /// The token: the key the previous page ended with.
    pub(super) after: Option<K>,
    /// The list's own options, `&name=value` each, for the `nextLink`.
    carried: String,
    /// What the page tokens are sealed for: the route and its order, the path (whose job,
    /// group or schedule) and the filters.
    list: page_token::Listing,
}

impl ListRequest {
    /// Checks `api-version` and the list options: `options` names the filter options this
    /// list takes (`filter`, `orderby`); any other of IoT Central's, or an OData `$` spelling,
    /// is a 400 rather than ignored (answering the whole list as if it had been applied would
    /// mislead). `parse` reads the token.
    pub(super) fn page<K, E>(
        &self,
        route: &str,
        options: &[&str],
        parse: impl Fn(&str) -> Result<K, E>,
    ) -> Result<Page<K>, ApiError> {
        let q = &self.q;
        let version = version(q)?;
        for option in ["$filter", "$top", "$orderby", "$skip", "$select", "$expand"] {
            if q.get(option).is_some() {
                return Err(ApiError::bad_request(
                    option,
                    "is not an IoT Central list option; IoT Central's are written without $: maxpagesize (page size), top, and on the lists that take them filter and orderby, e.g. ?api-version=2022-07-31&filter=contains(displayName, 'thermostat')&orderby=displayName&maxpagesize=10",
                ));
            }
        }
        for option in ["filter", "orderby"] {
            if !options.contains(&option) && q.get(option).is_some_and(|s| !s.is_empty()) {
                return Err(ApiError::bad_request(
                    option,
                    format!("IoT Central's reference defines no {option} for {route}; leave it out and page with maxpagesize"),
                ));
            }
        }
        let number = |name: &str| -> Result<Option<usize>, ApiError> {
            match q.get(name).filter(|s| !s.is_empty()) {
                None => Ok(None),
                Some(s) => match s.parse::<usize>() {
                    Ok(n) if (1..=MAX_PAGE).contains(&n) || (name == "top" && n >= 1) => {
                        Ok(Some(n))
                    }
                    _ => Err(ApiError::bad_request(
                        name,
                        format!(
                            "must be a whole number from 1{}, got {}",
                            if name == "top" {
                                String::new()
                            } else {
                                format!(" to {MAX_PAGE}")
                            },
                            crate::json::quote(s)
                        ),
                    )),
                },
            }
        };
        let given = number("maxpagesize")?;
        let top = number("top")?;
        let size = given.unwrap_or(DEFAULT_PAGE).min(top.unwrap_or(usize::MAX));
        // The route and order name the first format's tokens, which still open for it.
        let option = |name: &str| q.get(name).unwrap_or_default().trim().to_string();
        let list =
            page_token::Listing::new(&format!("central {route} orderby={}", option("orderby")))
                .with("path", &self.path)
                .with("filter", &option("filter"))
                .with("status", &option("status"))
                .with("search", &option("search"));
        Ok(Page {
            version,
            size,
            given,
            top,
            after: token(
                q.get(NEXT_LINK_TOKEN_PARAM),
                NEXT_LINK_TOKEN_PARAM,
                &list,
                parse,
            )?,
            carried: String::new(),
            list,
        })
    }

    /// `{"value": [...], "nextLink": ...}` for a page that ended with `next` (`None`: last page).
    pub(super) fn answer<K>(
        &self,
        p: &Page<K>,
        items: Vec<Value>,
        next: Option<String>,
    ) -> Response {
        let left = p.top.map(|t| t.saturating_sub(items.len()));
        let next = next
            .filter(|_| left != Some(0))
            .map(|position| page_token::seal(&p.list, &position));
        let link = next_link(&self.base, &self.path, &p.version, next.as_deref()).map(|mut l| {
            l.push_str(&p.carried);
            if let Some(t) = left {
                l.push_str(&format!("&top={t}"));
            }
            if let Some(n) = p.given {
                l.push_str(&format!("&maxpagesize={n}"));
            }
            l
        });
        ok_json(central_page(items, link))
    }
}

impl<K> Page<K> {
    fn carry_all(&mut self, options: &[(&str, &str)]) {
        for (name, raw) in options {
            self.carry(name, raw);
        }
    }

    /// Repeats a list option in the `nextLink` (percent-encoded).
    pub(super) fn carry(&mut self, name: &str, raw: &str) {
        self.carried
            .push_str(&format!("&{name}={}", percent_encode(raw)));
    }
}

/// A device's place in a list sorted by `orderby=displayName`: its display name, then its id so
/// equal names keep one order across pages. The page token is this key, so the next page starts
/// right after the last device shown even if devices were added or removed in between.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NameKey<I> {
    name: String,
    id: I,
    desc: bool,
}

impl<I: Ord> Ord for NameKey<I> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let o = (self.name.as_str(), &self.id).cmp(&(other.name.as_str(), &other.id));
        if self.desc {
            o.reverse()
        } else {
            o
        }
    }
}

impl<I: Ord> PartialOrd for NameKey<I> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The token: the percent-encoded name (which then holds no `/`), a `/`, and the id (device and
/// group ids never hold a `/`).
impl<I: std::fmt::Display> std::fmt::Display for NameKey<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", percent_encode(&self.name), self.id)
    }
}

fn name_key<I, E>(token: &str, desc: bool, id: fn(&str) -> Result<I, E>) -> Result<NameKey<I>, ()> {
    let (name, rest) = token.split_once('/').ok_or(())?;
    Ok(NameKey {
        name: central_filter::percent_decode(name).ok_or(())?,
        id: id(rest).map_err(|_| ())?,
        desc,
    })
}

/// The device and group lists: `filter` (applied by `keeps`) and `orderby=displayName [asc|desc]`
/// (ties by id), paged in id order or in that order. A sorted page sorts the matching entries
/// under the state's read lock (references only), as the order is not an index the state keeps.
#[allow(clippy::too_many_arguments)]
pub(super) async fn named_list<I, V, E>(
    app: &App,
    list: &ListRequest,
    route: &str,
    map: for<'a> fn(&'a muster_domain::State) -> &'a muster_domain::CowMap<I, V>,
    name: fn(&V) -> &str,
    keeps: impl Fn(&V) -> bool,
    render: fn(&V) -> Value,
) -> Result<Response, ApiError>
where
    I: Ord + Clone + std::fmt::Display + ParseId<E>,
{
    let raw_order = list.q.get("orderby").unwrap_or_default().trim().to_string();
    let order = central_filter::parse_orderby(&raw_order)?;
    let options = ["filter", "orderby"];
    let mut carried = Vec::new();
    if let Some(f) = list.q.get("filter").filter(|f| !f.is_empty()) {
        carried.push(("filter", f));
    }
    if order.is_some() {
        carried.push(("orderby", raw_order.as_str()));
    }
    match order {
        None => {
            let mut p = list.page(route, &options, I::parse_id)?;
            let (items, next) = app
                .read(|s| {
                    page(map(s), p.after.as_ref(), p.size, |_, v| {
                        keeps(v).then(|| render(v))
                    })
                })
                .await?;
            p.carry_all(&carried);
            Ok(list.answer(&p, items, next))
        }
        Some(o) => {
            let mut p = list.page(route, &options, |t: &str| name_key(t, o.desc, I::parse_id))?;
            let (items, next) = app
                .read(|s| {
                    let sorted: BTreeMap<NameKey<I>, &V> = map(s)
                        .iter()
                        .filter(|(_, v)| keeps(v))
                        .map(|(id, v)| {
                            let k = NameKey {
                                name: name(v).to_string(),
                                id: id.clone(),
                                desc: o.desc,
                            };
                            (k, v)
                        })
                        .collect();
                    page(&sorted, p.after.as_ref(), p.size, |_, v| Some(render(v)))
                })
                .await?;
            p.carry_all(&carried);
            Ok(list.answer(&p, items, next))
        }
    }
}

/// An id type's constructor, for reading page tokens.
pub(super) trait ParseId<E>: Sized {
    fn parse_id(s: &str) -> Result<Self, E>;
}

impl ParseId<muster_types::IdError> for DeviceId {
    fn parse_id(s: &str) -> Result<Self, muster_types::IdError> {
        DeviceId::new(s)
    }
}

impl ParseId<muster_types::IdError> for GroupId {
    fn parse_id(s: &str) -> Result<Self, muster_types::IdError> {
        GroupId::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, pairs: &[(&str, &str)]) -> ListRequest {
        let mut all = vec![("api-version", "2022-07-31")];
        all.extend_from_slice(pairs);
        ListRequest {
            q: Params::from_pairs(&all),
            base: "http://h".into(),
            path: path.into(),
        }
    }

    const ROUTE: &str = "GET /api/jobs/{id}/devices";

    #[test]
    fn a_token_continues_only_its_own_listing() {
        let parse = |s: &str| DeviceId::new(s);
        let first = request("/api/jobs/j1/devices", &[("status", "failed")]);
        let p = first.page(ROUTE, &[], parse).unwrap();
        let t = page_token::seal(&p.list, "dev-9");
        let next = |path: &str, pairs: &[(&str, &str)]| {
            let mut pairs = pairs.to_vec();
            pairs.push((NEXT_LINK_TOKEN_PARAM, t.as_str()));
            request(path, &pairs).page(ROUTE, &[], parse)
        };
        // The same listing, with another page size: continues.
        let p = next(
            "/api/jobs/j1/devices",
            &[("status", "failed"), ("maxpagesize", "7")],
        )
        .unwrap();
        assert_eq!(p.after, Some(DeviceId::new("dev-9").unwrap()));
        // Another filter, another job, another route: 400 saying the token is another listing's.
        for (path, pairs) in [
            ("/api/jobs/j1/devices", vec![("status", "succeeded")]),
            ("/api/jobs/j1/devices", vec![]),
            (
                "/api/jobs/j1/devices",
                vec![("status", "failed"), ("search", "x")],
            ),
            ("/api/jobs/j2/devices", vec![("status", "failed")]),
        ] {
            let e = next(path, &pairs).err().unwrap();
            assert_eq!(e.status, 400, "{path} {pairs:?}");
            assert!(
                e.message.starts_with(&format!(
                    "{NEXT_LINK_TOKEN_PARAM}: belongs to another listing"
                )),
                "{e}"
            );
        }
        let mut pairs = vec![(NEXT_LINK_TOKEN_PARAM, t.as_str())];
        pairs.push(("status", "failed"));
        let e = request("/api/jobs", &pairs)
            .page("GET /api/jobs", &[], |s: &str| JobId::new(s))
            .err()
            .unwrap();
        assert!(e.message.contains("belongs to another listing"), "{e}");
    }
}
