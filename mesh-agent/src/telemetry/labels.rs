//! The closed sets of label values, one enum each: the text a label shows
//! is spelled once, here.

use std::fmt;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

/// An enum of label values: `as_str`, `Display` and `EncodeLabelValue`.
macro_rules! label_values {
    ($(#[$meta:meta])* pub enum $name:ident {
        $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+
    }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
                fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}

label_values! {
    /// Which agent of a call counts it (`side` of the connection and
    /// handshake metrics); a call between two nodes counts on both.
    pub enum Side {
        /// This agent speaks for the caller.
        Outbound => "outbound",
        /// This agent speaks for the destination.
        Inbound => "inbound",
    }
}

label_values! {
    /// Where a denial was decided (`side` of `mesh_denials_total`).
    pub enum Reporter {
        /// The caller's node (connect4/6 and the outbound listener).
        Source => "source",
        /// The destination's node (the inbound listener): authoritative.
        Destination => "destination",
    }
}

label_values! {
    /// Which way bytes went (`direction` of `mesh_connection_bytes_total`).
    pub enum Direction {
        ToDestination => "to_destination",
        ToSource => "to_source",
    }
}

label_values! {
    /// A completed TLS handshake (`kind` of `mesh_handshakes_total`).
    pub enum HandshakeKind {
        Full => "full",
        /// From a session ticket.
        Resumed => "resumed",
    }
}

label_values! {
    /// How a connection ended (the access log's `verdict`).
    pub enum Verdict {
        /// Allowed, and ran to its end.
        Allowed => "allowed",
        /// Refused by the intentions.
        Denied => "denied",
        /// Allowed when opened, closed because the intentions changed.
        Cut => "cut",
        /// Ended by an error.
        Error => "error",
    }
}

/// The labels of a per-service metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: String,
}

/// A container the agent serves: its service, its cgroup (below the
/// cgroup2 root) and its network namespace (nsfs inode). Also the
/// access log's `container` and `netns`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ContainerLabels {
    pub service: String,
    pub cgroup: String,
    pub netns: String,
}

impl ContainerLabels {
    /// These labels and `side`.
    pub fn with_side(self, side: Side) -> ContainerSideLabels {
        ContainerSideLabels {
            service: self.service,
            cgroup: self.cgroup,
            netns: self.netns,
            side,
        }
    }
}

/// [`ContainerLabels`] and a [`Side`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ContainerSideLabels {
    pub service: String,
    pub cgroup: String,
    pub netns: String,
    pub side: Side,
}

/// The labels of a per-map metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabels {
    pub map: &'static str,
}

label_values! {
    /// Why a TLS handshake, or a connection before it, was refused
    /// (`reason` of `mesh_handshake_failures_total`).
    pub enum Refusal {
        Expired => "expired",
        UnknownIssuer => "unknown_issuer",
        BadCertificate => "bad_certificate",
        BadChain => "bad_chain",
        /// Not the SPIFFE ID a leaf of its kind must carry.
        BadIdentity => "bad_identity",
        UnknownService => "unknown_service",
        UnknownNode => "unknown_node",
        /// Signed by a node that cannot vouch for it.
        WrongNode => "wrong_node",
        UnexpectedIdentity => "unexpected_identity",
        /// Its node, or its node CA, is revoked (`mesh-agent node revoke`).
        Revoked => "revoked",
        WrongSni => "wrong_sni",
        NotTls => "not_tls",
        Alpn => "alpn",
        Timeout => "timeout",
        HelloTimeout => "hello_timeout",
        NoClientCertificate => "no_client_certificate",
        /// Every handshake slot taken.
        TooManyHandshakes => "too_many_handshakes",
        /// The source's share of the slots taken.
        TooManyFromSource => "too_many_from_source",
        /// Refused in the kernel (sk_lookup), before any handshake.
        NotAMeshNode => "not_a_mesh_node",
        Other => "other",
    }
}
