//! Validated names: [`ServiceName`] and [`NodeName`].
//!
//! A name is 1 to [`MAX_LEN`] lowercase ASCII letters, digits and '-', not
//! starting or ending with '-' (a DNS label); a service is never called
//! `"*"` (that character is refused anyway; a service gets its own message
//! because `"*"` means "any service" in intentions). Both types are built
//! only through this check ([`FromStr`], [`TryFrom<&str>`], serde), so
//! holding one means the text is valid. They clone cheaply (`Arc<str>`),
//! compare, order and hash as their text, and [`Borrow<str>`] lets a map
//! keyed by them be looked up with a `&str`.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;
use std::sync::Arc;

/// Longest node or service name (a DNS label).
pub const MAX_LEN: usize = 63;

/// Why a text is not a valid name; `kind` is "node" or "service". The
/// messages are the config file's problems.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{kind} name must not be empty: expected lowercase letters, digits and '-'")]
    Empty { kind: &'static str },
    #[error("service name must not be \"*\": it means \"any service\" in intentions")]
    AnyService,
    #[error("invalid {kind} name {name:?}: expected only lowercase ascii letters, digits and '-'")]
    Character { kind: &'static str, name: String },
    #[error("invalid {kind} name {name:?}: must not start or end with '-'")]
    Hyphen { kind: &'static str, name: String },
    #[error("{kind} name {name:?} is {len} characters long: expected at most {MAX_LEN}")]
    TooLong {
        kind: &'static str,
        name: String,
        len: usize,
    },
}

/// Checks `name` as a name of `kind` ("node" or "service"), in the order
/// the config file's problems have always been found.
fn check(kind: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if kind == "service" && name == "*" {
        return Err(NameError::AnyService);
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(NameError::Character {
            kind,
            name: name.to_owned(),
        });
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(NameError::Hyphen {
            kind,
            name: name.to_owned(),
        });
    }
    if name.len() > MAX_LEN {
        return Err(NameError::TooLong {
            kind,
            name: name.to_owned(),
            len: name.len(),
        });
    }
    Ok(())
}

/// Defines a validated name type of the given kind ("node" or "service").
macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Arc<str>);

        impl $name {
            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = NameError;

            fn from_str(text: &str) -> Result<Self, NameError> {
                check($kind, text)?;
                Ok(Self(Arc::from(text)))
            }
        }

        impl TryFrom<&str> for $name {
            type Error = NameError;

            fn try_from(text: &str) -> Result<Self, NameError> {
                text.parse()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        /// As the text's `Debug` (quoted), as the `String` it replaces was.
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                &*self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                &*self.0 == *other
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                self == &*other.0
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == &*other.0
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &*self.0 == other.as_str()
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                self.as_str() == &*other.0
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// The name of a `[[service]]`.
    ServiceName,
    "service"
);

name_type!(
    /// The name of a `[[node]]`.
    NodeName,
    "node"
);

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap, HashSet};

    use super::*;

    #[test]
    fn valid_names_parse_and_show_as_written() {
        for text in ["a", "api", "data-api", "b2", "0", &"x".repeat(MAX_LEN)] {
            let service: ServiceName = text.parse().unwrap();
            let node = NodeName::try_from(text).unwrap();
            assert_eq!(service.to_string(), text);
            assert_eq!(node.as_str(), text);
            assert_eq!(format!("{service:?}"), format!("{text:?}"));
            assert_eq!(&*node, text);
            assert_eq!(service, text);
        }
    }

    #[test]
    fn invalid_names_are_refused_with_the_config_messages() {
        let cases: [(&str, &str); 7] = [
            (
                "",
                "service name must not be empty: expected lowercase letters, digits and '-'",
            ),
            (
                "*",
                "service name must not be \"*\": it means \"any service\" in intentions",
            ),
            (
                "API",
                "invalid service name \"API\": expected only lowercase ascii letters, digits and '-'",
            ),
            (
                "a.b",
                "invalid service name \"a.b\": expected only lowercase ascii letters, digits and '-'",
            ),
            (
                "-a",
                "invalid service name \"-a\": must not start or end with '-'",
            ),
            (
                "a-",
                "invalid service name \"a-\": must not start or end with '-'",
            ),
            (
                &"x".repeat(MAX_LEN + 1),
                "is 64 characters long: expected at most 63",
            ),
        ];
        for (text, message) in cases {
            let error = text.parse::<ServiceName>().unwrap_err().to_string();
            assert!(error.ends_with(message), "{text:?}: {error}");
        }
        assert_eq!(
            "*".parse::<NodeName>().unwrap_err().to_string(),
            "invalid node name \"*\": expected only lowercase ascii letters, digits and '-'"
        );
        assert_eq!(
            "".parse::<NodeName>().unwrap_err().to_string(),
            "node name must not be empty: expected lowercase letters, digits and '-'"
        );
    }

    #[test]
    fn nodes_and_services_accept_the_same_texts() {
        for text in ["", "*", "a", "a b", "a_b", "-", "ok-1", "\u{e9}"] {
            assert_eq!(
                text.parse::<NodeName>().is_ok(),
                text.parse::<ServiceName>().is_ok(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn maps_keyed_by_names_are_looked_up_by_str() {
        let api: ServiceName = "api".parse().unwrap();
        let hash = HashMap::from([(api.clone(), 1)]);
        assert_eq!(hash.get("api"), Some(&1));
        let tree = BTreeMap::from([(NodeName::try_from("b").unwrap(), 2)]);
        assert_eq!(tree.get("b"), Some(&2));
        let set = HashSet::from([api]);
        assert!(set.contains("api"));
        assert!(!set.contains("web"));
    }

    #[test]
    fn names_order_as_their_text() {
        let mut names: Vec<NodeName> = ["c", "a", "b-1", "b"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        names.sort();
        let texts: Vec<&str> = names.iter().map(NodeName::as_str).collect();
        assert_eq!(texts, ["a", "b", "b-1", "c"]);
    }

    #[test]
    fn serde_is_a_plain_string_and_deserializing_validates() {
        let api: ServiceName = "api".parse().unwrap();
        assert_eq!(serde_json::to_string(&api).unwrap(), "\"api\"");
        let back: ServiceName = serde_json::from_str("\"api\"").unwrap();
        assert_eq!(back, api);
        let node: NodeName = serde_json::from_str("\"node-b\"").unwrap();
        assert_eq!(node, "node-b");
        let error = serde_json::from_str::<ServiceName>("\"API\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("invalid service name \"API\""), "{error}");
        assert!(serde_json::from_str::<NodeName>("\"\"").is_err());
        assert!(serde_json::from_str::<NodeName>("3").is_err());
        // An escaped string (not borrowable) validates too.
        let escaped: NodeName = serde_json::from_str("\"\\u0062\"").unwrap();
        assert_eq!(escaped, "b");
    }
}
