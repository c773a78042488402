//! The admin endpoint's routes: each component registers the paths it
//! answers ([`Routes`]); the server (`admin::Admin`) only finds the route,
//! reads a POST body (bounded) and writes the [`Reply`].

use std::{collections::BTreeMap, future::Future, pin::Pin};

use bytes::Bytes;
use http::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};

/// The content type of every admin document but `/metrics`.
pub const JSON: &str = "application/json";

/// Who called the admin endpoint, as connect4/6 saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    /// The service whose cgroup (or one below it) the caller runs in.
    pub service: Option<String>,
}

impl Caller {
    /// Whether it may report `service`'s ttl checks: root, or the
    /// service's own processes.
    pub fn may_report(&self, service: &str) -> bool {
        self.uid == 0 || self.service.as_deref() == Some(service)
    }
}

/// One request, as a route sees it.
#[derive(Debug, Default, Clone)]
pub struct Call {
    /// The body of a POST (empty for other methods).
    pub body: Bytes,
    /// The caller, if the kernel recorded its connect.
    pub caller: Option<Caller>,
    /// The request's headers (the web UI's writes check their token and
    /// origin).
    pub headers: http::HeaderMap,
}

/// A route's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    /// `body` of `content_type`, answered with 200 (the web UI's pages).
    pub fn asset(content_type: &'static str, body: impl Into<String>) -> Self {
        Self {
            status: StatusCode::OK,
            content_type,
            body: body.into(),
        }
    }

    /// `value` as JSON with `status`.
    pub fn json(status: StatusCode, value: &Value) -> Self {
        Self {
            status,
            content_type: JSON,
            body: value.to_string(),
        }
    }

    /// `{"error": message}` with `status`.
    pub fn error(status: StatusCode, message: impl std::fmt::Display) -> Self {
        Self::json(status, &json!({ "error": message.to_string() }))
    }

    /// A JSON document answered with 200, or its serialization error with
    /// 500.
    pub fn document(doc: &impl Serialize) -> Self {
        match serde_json::to_string(doc) {
            Ok(body) => Self {
                status: StatusCode::OK,
                content_type: JSON,
                body,
            },
            Err(e) => Self::error(StatusCode::INTERNAL_SERVER_ERROR, e),
        }
    }
}

/// A reply to come.
pub type Pending = Pin<Box<dyn Future<Output = Reply> + Send>>;

/// What answers one path: at once, or later (a write to etcd).
pub enum Handler {
    Now(Box<dyn Fn(&Call) -> Reply + Send + Sync>),
    Later(Box<dyn Fn(Call) -> Pending + Send + Sync>),
}

impl Handler {
    /// The reply to `call`.
    pub async fn reply(&self, call: Call) -> Reply {
        match self {
            Self::Now(f) => f(&call),
            Self::Later(f) => f(call).await,
        }
    }
}

/// Which methods a route answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Methods {
    /// Any method: the documents (`GET`, as curl sends it).
    Any,
    /// `POST` only, with a body of at most `MAX_BODY` bytes.
    Post,
}

/// The largest request body a POST route is given.
pub const MAX_BODY: usize = 16 * 1024;

/// The routes of the admin endpoint, by path.
#[derive(Default)]
pub struct Routes(BTreeMap<&'static str, (Methods, Handler)>);

impl Routes {
    /// `path` answers every method with `handler`.
    pub fn any(
        &mut self,
        path: &'static str,
        handler: impl Fn(&Call) -> Reply + Send + Sync + 'static,
    ) {
        self.0
            .insert(path, (Methods::Any, Handler::Now(Box::new(handler))));
    }

    /// `path` answers POST with `handler`, given the body.
    pub fn post(
        &mut self,
        path: &'static str,
        handler: impl Fn(&Call) -> Reply + Send + Sync + 'static,
    ) {
        self.0
            .insert(path, (Methods::Post, Handler::Now(Box::new(handler))));
    }

    /// `path` answers POST with the future `handler` makes of the call.
    pub fn post_later<F>(
        &mut self,
        path: &'static str,
        handler: impl Fn(Call) -> F + Send + Sync + 'static,
    ) where
        F: Future<Output = Reply> + Send + 'static,
    {
        let handler = move |call| Box::pin(handler(call)) as Pending;
        self.0
            .insert(path, (Methods::Post, Handler::Later(Box::new(handler))));
    }

    /// The route of `path` for a request that is (or is not) a POST.
    pub fn find(&self, path: &str, post: bool) -> Option<(Methods, &Handler)> {
        let (methods, handler) = self.0.get(path)?;
        match methods {
            Methods::Post if !post => None,
            _ => Some((*methods, handler)),
        }
    }

    /// The registered paths, in order.
    pub fn paths(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_post_route_answers_only_post() {
        let mut routes = Routes::default();
        routes.post("/check", |_| {
            Reply::json(StatusCode::OK, &json!({"ok": true}))
        });
        routes.any("/status", |_| Reply::document(&json!({"node": "a"})));
        assert!(routes.find("/check", false).is_none());
        assert!(routes.find("/check", true).is_some());
        assert!(routes.find("/status", true).is_some());
        assert!(routes.find("/status", false).is_some());
        assert!(routes.find("/nothing", false).is_none());
        assert_eq!(routes.paths().collect::<Vec<_>>(), ["/check", "/status"]);
    }

    #[test]
    fn only_root_or_the_service_itself_may_report() {
        let root = Caller {
            uid: 0,
            service: None,
        };
        let web = Caller {
            uid: 1000,
            service: Some("web".into()),
        };
        assert!(root.may_report("api"));
        assert!(web.may_report("web"));
        assert!(!web.may_report("api"));
    }
}
