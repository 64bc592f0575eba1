//! REST routes declared with the permission each needs, so a route cannot be added without one.
//!
//! [`Routes`] is the only way handlers reach the router: each method of each path is added with
//! its [`Access`], which becomes a guard in front of that one handler, and a row of the table
//! [`route_table`] returns (a test walks it against a live node).

use axum::extract::Request;
use axum::handler::Handler;
use axum::http::{header, HeaderValue, Method};
use axum::middleware::{from_fn, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use axum::Router;

use super::App;
use crate::access::{Access, Denied, Gate};
use crate::error::ApiError;

/// One row of the REST permission table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteAccess {
    pub method: &'static str,
    /// axum's path template, e.g. `/api/jobs/{id}`.
    pub path: &'static str,
    pub access: Access,
}

/// The routes of the gateway and their table, built together.
pub(super) struct Routes {
    router: Router<App>,
    table: Vec<RouteAccess>,
}

impl Routes {
    pub(super) fn new() -> Self {
        Routes {
            router: Router::new(),
            table: Vec::new(),
        }
    }

    pub(super) fn get<H: Handler<T, App>, T: 'static>(
        self,
        path: &'static str,
        a: Access,
        h: H,
    ) -> Self {
        self.add(Method::GET, MethodFilter::GET, path, a, h)
    }

    pub(super) fn put<H: Handler<T, App>, T: 'static>(
        self,
        path: &'static str,
        a: Access,
        h: H,
    ) -> Self {
        self.add(Method::PUT, MethodFilter::PUT, path, a, h)
    }

    pub(super) fn post<H: Handler<T, App>, T: 'static>(
        self,
        path: &'static str,
        a: Access,
        h: H,
    ) -> Self {
        self.add(Method::POST, MethodFilter::POST, path, a, h)
    }

    pub(super) fn patch<H: Handler<T, App>, T: 'static>(
        self,
        path: &'static str,
        a: Access,
        h: H,
    ) -> Self {
        self.add(Method::PATCH, MethodFilter::PATCH, path, a, h)
    }

    pub(super) fn delete<H: Handler<T, App>, T: 'static>(
        self,
        path: &'static str,
        a: Access,
        h: H,
    ) -> Self {
        self.add(Method::DELETE, MethodFilter::DELETE, path, a, h)
    }

    fn add<H: Handler<T, App>, T: 'static>(
        mut self,
        method: Method,
        filter: MethodFilter,
        path: &'static str,
        access: Access,
        handler: H,
    ) -> Self {
        let route = on(filter, handler).layer(from_fn(move |req: Request, next: Next| {
            guard(access, req, next)
        }));
        self.router = self.router.route(path, route);
        self.table.push(RouteAccess {
            method: method_name(&method),
            path,
            access,
        });
        self
    }

    pub(super) fn merge(mut self, other: Routes) -> Self {
        self.router = self.router.merge(other.router);
        self.table.extend(other.table);
        self
    }

    pub(super) fn into_parts(self) -> (Router<App>, Vec<RouteAccess>) {
        (self.router, self.table)
    }
}

fn method_name(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

/// Checks the caller before the handler runs; the handler finds the caller's `Principal` in the
/// request's extensions. The [`Gate`] comes from the router's extensions (see `rest::router`).
async fn guard(access: Access, mut req: Request, next: Next) -> Response {
    let Some(gate) = req.extensions().get::<Gate>().cloned() else {
        tracing::error!("REST route without the authentication gate; refusing");
        return ApiError::new(500, "InternalError", "internal error on the server").into_response();
    };
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    let subject = req
        .extensions()
        .get::<muster_tls::ClientIdentity>()
        .map(|c| c.subject.as_str());
    match gate.check(header, subject, access) {
        Ok(principal) => {
            if let Some(p) = principal {
                req.extensions_mut().insert(p);
            }
            next.run(req).await
        }
        Err(d) => denied(d),
    }
}

/// 401 with `WWW-Authenticate`, or 403 naming the permission.
pub(super) fn denied(d: Denied) -> Response {
    match d {
        Denied::Unauthenticated => {
            let mut r = ApiError::new(401, "Unauthorized", d.message()).into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("SharedAccessSignature"),
            );
            r
        }
        Denied::Forbidden(_) => ApiError::new(403, "Forbidden", d.message()).into_response(),
    }
}
