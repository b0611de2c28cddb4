//! What a target is reached by: its protocol and ports.

use serde::{Deserialize, Serialize};

// No doc comments on these two: they would become descriptions in the
// cloud's OpenAPI document, which predates this crate.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Any,
}

// An inclusive range: a single port has `first == last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PortRange {
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 65535))]
    pub first: u16,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 65535))]
    pub last: u16,
}
