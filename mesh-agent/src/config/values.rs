//! Checks of single values. Each returns the typed value or a message that
//! says what is wrong and what is expected; `validate` adds the position.

use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::{Action, Balance};

/// Longest node or service name (a DNS label).
const MAX_NAME_LEN: usize = 63;
/// Longest trust domain (a DNS name).
const MAX_DOMAIN_LEN: usize = 253;

/// A node or service name: 1 to 63 lowercase ASCII letters, digits and
/// '-', not starting or ending with '-'. `kind` is "node" or "service".
pub(super) fn name(kind: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!(
            "{kind} name must not be empty: expected lowercase letters, digits and '-'"
        ));
    }
    if kind == "service" && name == "*" {
        return Err(
            "service name must not be \"*\": it means \"any service\" in intentions".to_owned(),
        );
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!(
            "invalid {kind} name {name:?}: expected only lowercase ascii letters, digits and '-'"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(format!(
            "invalid {kind} name {name:?}: must not start or end with '-'"
        ));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "{kind} name {name:?} is {} characters long: expected at most {MAX_NAME_LEN}",
            name.len()
        ));
    }
    Ok(())
}

/// A lowercase DNS-like name: dot-separated labels of letters, digits and
/// '-', no empty label, no label starting or ending with '-'.
pub(super) fn trust_domain(domain: &str) -> Result<(), String> {
    let expected = "expected a lowercase dns name like \"mesh.local\" \
                    (letters, digits, '-' and '.')";
    if domain.is_empty() {
        return Err(format!("trust_domain must not be empty: {expected}"));
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= MAX_NAME_LEN
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
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

/// A duration such as "30s", "5m", "24h", "1h30m" or "90s": one or more
/// `<digits><unit>` with units h, m, s, each at most once, largest first.
/// At least one second.
/// The longest leaf lifetime accepted (90 days).
const MAX_LEAF_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

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

fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text;
    let mut total: u64 = 0;
    let mut previous_unit = u64::MAX;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let count: u64 = rest[..digits].parse().ok()?;
        let mut chars = rest[digits..].chars();
        let unit = match chars.next()? {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        if unit >= previous_unit {
            return None;
        }
        previous_unit = unit;
        total = total.checked_add(count.checked_mul(unit)?)?;
        rest = chars.as_str();
    }
    Some(Duration::from_secs(total))
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
    if path.starts_with("/mesh") && path.components().any(|c| c.as_os_str() == "_agent") {
        return Err(format!(
            "cgroup {text:?} is an agent's cgroup: expected the service's own cgroup"
        ));
    }
    Ok(path.to_owned())
}
