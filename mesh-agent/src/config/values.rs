//! Checks of single values. Each returns the typed value or a message that
//! says what is wrong and what is expected; `validate` adds the position.

use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::{Action, Balance};
use crate::names::{NameError, NodeName, ServiceName};

/// Longest trust domain (a DNS name).
const MAX_DOMAIN_LEN: usize = 253;

/// A service's name (see [`crate::names`]).
pub(super) fn service_name(text: &str) -> Result<ServiceName, String> {
    text.parse().map_err(|e: NameError| e.to_string())
}

/// A node's name (see [`crate::names`]).
pub(super) fn node_name(text: &str) -> Result<NodeName, String> {
    text.parse().map_err(|e: NameError| e.to_string())
}

/// A lowercase DNS-like name: dot-separated labels of letters, digits and
/// '-', no empty label, no label starting or ending with '-'.
pub(super) fn trust_domain(domain: &str) -> Result<(), String> {
    let expected = "expected a lowercase dns name like \"mesh.local\" \
                    (letters, digits, '-' and '.')";
    if domain.is_empty() {
        return Err(format!("trust_domain must not be empty: {expected}"));
    }
    // Each label is what a node name is: one DNS label.
    let label_ok = |label: &str| label.parse::<NodeName>().is_ok();
    if domain.len() > MAX_DOMAIN_LEN || !domain.split('.').all(label_ok) {
        return Err(format!("invalid trust_domain {domain:?}: {expected}"));
    }
    Ok(())
}

/// "allow" or "deny". `what` names the field in the message.
pub(super) fn action(what: &str, text: &str) -> Result<Action, String> {
    match text {
        "allow" => Ok(Action::Allow),
        "deny" => Ok(Action::Deny),
        _ => Err(format!(
            "invalid {what} {text:?}: expected \"allow\" or \"deny\""
        )),
    }
}

/// A service's `lb`: "least_request", "random" or "round_robin".
pub(super) fn balance(text: &str) -> Result<Balance, String> {
    match text {
        "least_request" => Ok(Balance::LeastRequest),
        "random" => Ok(Balance::Random),
        "round_robin" => Ok(Balance::RoundRobin),
        _ => Err(format!(
            "invalid lb {text:?}: expected \"least_request\", \"random\" or \"round_robin\""
        )),
    }
}

/// The longest leaf lifetime accepted (90 days).
const MAX_LEAF_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

/// A `leaf_ttl`: a duration (see [`parse_duration`]) of at least 1s and at
/// most 90 days.
pub(super) fn leaf_ttl(text: &str) -> Result<Duration, String> {
    let ttl = parse_duration(text).ok_or_else(|| {
        format!(
            "invalid leaf_ttl {text:?}: expected a duration like \"30s\", \"5m\", \"24h\" or \"1h30m\""
        )
    })?;
    if ttl < Duration::from_secs(1) {
        return Err(format!(
            "leaf_ttl {text:?} is too short: expected at least 1s"
        ));
    }
    if ttl > MAX_LEAF_TTL {
        return Err(format!(
            "leaf_ttl {text:?} is too long: expected at most 2160h (90 days); leaves are meant to be short-lived"
        ));
    }
    Ok(ttl)
}

/// The shortest `interval` of a check.
const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// The longest `interval`, `timeout` or `ttl` of a check (24h), so that the
/// checker's timers never overflow.
const MAX_CHECK_DURATION: Duration = Duration::from_secs(24 * 3600);
/// The largest `success_before_passing` or `failures_before_critical`.
const MAX_CHECK_COUNT: u32 = 1000;
/// The longest `http` path of a check, in bytes.
const MAX_HTTP_PATH_LEN: usize = 1024;

/// A check's `interval`: a duration from 100ms to 24h.
pub(super) fn check_interval(text: &str) -> Result<Duration, String> {
    let interval = check_duration("interval", text)?;
    if interval < MIN_CHECK_INTERVAL {
        return Err(format!(
            "interval {text:?} is too short: expected at least 100ms"
        ));
    }
    Ok(interval)
}

/// A check's `timeout`: a duration above zero, at most 24h.
pub(super) fn check_timeout(text: &str) -> Result<Duration, String> {
    let timeout = check_duration("timeout", text)?;
    if timeout.is_zero() {
        return Err(format!(
            "timeout {text:?} is zero: expected a positive duration like \"1s\" or \"500ms\""
        ));
    }
    Ok(timeout)
}

/// A check's `ttl`: a duration from 1s to 24h.
pub(super) fn check_ttl(text: &str) -> Result<Duration, String> {
    let ttl = check_duration("ttl", text)?;
    if ttl < Duration::from_secs(1) {
        return Err(format!("ttl {text:?} is too short: expected at least 1s"));
    }
    Ok(ttl)
}

/// A check duration of at most 24h; `what` names the field.
fn check_duration(what: &str, text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text).ok_or_else(|| {
        format!(
            "invalid {what} {text:?}: expected a duration like \"10s\", \"500ms\", \"1m30s\" or \"1s500ms\""
        )
    })?;
    if duration > MAX_CHECK_DURATION {
        return Err(format!("{what} {text:?} is too long: expected at most 24h"));
    }
    Ok(duration)
}

/// A check's `success_before_passing` or `failures_before_critical` (named
/// by `what`): an integer in 0..=1000.
pub(super) fn check_count(what: &str, value: &toml::Value) -> Result<u32, String> {
    match value {
        toml::Value::Integer(n) => match u32::try_from(*n) {
            Ok(count) if count <= MAX_CHECK_COUNT => Ok(count),
            _ => Err(format!(
                "{what} {n} is out of range: expected an integer in 0..={MAX_CHECK_COUNT}"
            )),
        },
        other => Err(format!(
            "{what} must be an integer in 0..={MAX_CHECK_COUNT}, found a {}",
            other.type_str()
        )),
    }
}

/// A check's `name`: not empty, no control characters (it is one line of
/// logs and status).
pub(super) fn check_name(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err(
            "check name must not be empty: leave `name` out for the default \
                    (\"http <path>\", \"tcp\" or \"ttl\")"
                .to_owned(),
        );
    }
    if text.chars().any(char::is_control) {
        return Err(format!(
            "check name {text:?} contains a control character: expected one line of text"
        ));
    }
    Ok(())
}

/// A check's `http`: the path (and query) the agent GETs on
/// `127.0.0.1:<port>` of the service, `port` when it is valid. It starts
/// with '/', has no whitespace, control character or fragment, and is a
/// valid HTTP request path. A pasted URL is refused with its path as the
/// suggestion.
pub(super) fn http_path(text: &str, port: Option<u16>) -> Result<String, String> {
    const EXPECTED: &str = "expected a path like \"/health\"";
    if let Some(path) = url_path(text) {
        let on = match port {
            Some(port) => format!("127.0.0.1:{port}, the service's port"),
            None => "127.0.0.1:<service port>".to_owned(),
        };
        return Err(format!(
            "http {text:?} is a URL: this mesh takes the path only, http = {path:?}; \
             the agent GETs it on {on}"
        ));
    }
    if text.is_empty() {
        return Err(format!("http path must not be empty: {EXPECTED}"));
    }
    if !text.starts_with('/') {
        return Err(format!(
            "http path {text:?} does not start with '/': {EXPECTED}"
        ));
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "http path {text:?} contains whitespace or a control character: {EXPECTED} \
             (percent-encode a space as %20)"
        ));
    }
    if text.contains('#') {
        return Err(format!(
            "http path {text:?} has a fragment ('#'), which is never sent: \
             expected the path and query only"
        ));
    }
    if text.len() > MAX_HTTP_PATH_LEN {
        return Err(format!(
            "http path is {} bytes long: expected at most {MAX_HTTP_PATH_LEN}",
            text.len()
        ));
    }
    if hyper::http::uri::PathAndQuery::try_from(text).is_err() {
        return Err(format!(
            "http path {text:?} is not a valid request path: {EXPECTED}, \
             with characters such as '<', '>' and '`' percent-encoded"
        ));
    }
    Ok(text.to_owned())
}

/// The path of `text` if it looks like a URL rather than a path:
/// `scheme://host[:port][/path]` or `host:port[/path]`; "/" if it has none.
fn url_path(text: &str) -> Option<&str> {
    let rest = if let Some(i) = text.find("://") {
        &text[i + "://".len()..]
    } else if !text.starts_with('/') && text.split('/').next().is_some_and(|h| h.contains(':')) {
        text
    } else {
        return None;
    };
    Some(rest.find('/').map_or("/", |i| &rest[i..]))
}

/// A duration such as "30s", "5m", "24h", "1h30m", "90s", "500ms" or
/// "1s500ms": one or more `<digits><unit>` with units h, m, s and ms, each
/// at most once, largest first. `None` if `text` is not one or overflows.
fn parse_duration(text: &str) -> Option<Duration> {
    const UNITS: [(&str, u64); 4] = [("h", 3_600_000), ("ms", 1), ("m", 60_000), ("s", 1000)];
    let mut rest = text;
    let mut total_ms: u64 = 0;
    let mut previous_unit = u64::MAX;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(digits);
        let count: u64 = number.parse().ok()?;
        // "ms" is tried before "m".
        let (suffix, unit) = UNITS.into_iter().find(|(u, _)| after.starts_with(u))?;
        if unit >= previous_unit {
            return None;
        }
        previous_unit = unit;
        total_ms = total_ms.checked_add(count.checked_mul(unit)?)?;
        rest = &after[suffix.len()..];
    }
    Some(Duration::from_millis(total_ms))
}

/// An IPv4 or IPv6 address usable as a node address or a VIP: not loopback,
/// unspecified, multicast or broadcast (also when written as an
/// IPv4-mapped IPv6 address). `what` names the field in the message.
pub(super) fn address(what: &str, text: &str) -> Result<IpAddr, String> {
    let ip: IpAddr = text
        .parse()
        .map_err(|_| format!("invalid {what} {text:?}: expected an IPv4 or IPv6 address"))?;
    let canonical = ip.to_canonical();
    let kind = if canonical.is_loopback() {
        "loopback"
    } else if canonical.is_unspecified() {
        "unspecified"
    } else if canonical.is_multicast() {
        "multicast"
    } else if matches!(canonical, IpAddr::V4(v4) if v4.is_broadcast()) {
        "broadcast"
    } else {
        return Ok(ip);
    };
    Err(format!(
        "{what} {ip} is a {kind} address: expected a unicast address \
         that is not loopback, unspecified, multicast or broadcast"
    ))
}

/// A port in 1..=65535.
pub(super) fn port(value: &toml::Value) -> Result<u16, String> {
    match value {
        toml::Value::Integer(n) => match u16::try_from(*n) {
            Ok(port) if port != 0 => Ok(port),
            _ => Err(format!(
                "port {n} is out of range: expected an integer in 1..=65535"
            )),
        },
        other => Err(format!(
            "port must be an integer in 1..=65535, found a {}",
            other.type_str()
        )),
    }
}

/// A cgroup path as written: absolute, without "..".
pub(super) fn cgroup(text: &str) -> Result<PathBuf, String> {
    let path = Path::new(text);
    if !text.starts_with('/') {
        return Err(format!(
            "cgroup {text:?} is not absolute: expected a path like \"/system.slice/app.service\""
        ));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "cgroup {text:?} contains \"..\": expected a path without \"..\""
        ));
    }
    if !path.components().any(|c| matches!(c, Component::Normal(_))) {
        return Err(format!(
            "cgroup {text:?} is the root cgroup: expected the service's own cgroup"
        ));
    }
    if path.starts_with(super::MESH_ROOT) && path.components().any(|c| c.as_os_str() == "_agent") {
        return Err(format!(
            "cgroup {text:?} is an agent's cgroup: expected the service's own cgroup"
        ));
    }
    Ok(path.to_owned())
}

/// A node CA's SHA-256: 64 lowercase hex digits.
pub(super) fn node_ca(text: &str) -> Result<String, String> {
    if text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "invalid node_ca {text:?}: expected the SHA-256 of the node CA's certificate, 64 lowercase hex digits (`openssl x509 -fingerprint -sha256` without colons)"
        ))
    }
}
