//! The small value types every message is built from.
//!
//! Each one checks its own shape when it is parsed, so a message that decodes
//! never holds a key of the wrong length or a subnet with host bits set; what
//! depends on the whole message (lengths, counts) is left to
//! [`Validate`](crate::Validate).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;

macro_rules! id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl From<u64> for $name {
            fn from(id: u64) -> Self {
                $name(id)
            }
        }
    };
}

id!(
    /// A maintenance session, as the cloud numbers it.
    SessionId
);
id!(
    /// A gateway, as the cloud numbers it.
    GatewayId
);
id!(
    /// A relay, as the cloud numbers it.
    RelayId
);
id!(
    /// One relay allocation: the pair of UDP ports that forwards one peer's traffic.
    AllocationId
);
id!(
    /// One issued client configuration (one technician's peer in one session).
    ConfigId
);

/// Why a key, challenge, signature or subnet did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("expected {expected} characters of {encoding}, got {got}")]
    Length { encoding: &'static str, expected: usize, got: usize },
    #[error("not valid {0}")]
    Encoding(&'static str),
    #[error("subnet must look like ADDRESS/PREFIX")]
    SubnetSyntax,
    #[error("prefix length {prefix} is too long for an IPv{family} address (at most {max})")]
    PrefixTooLong { prefix: u8, family: u8, max: u8 },
    #[error("subnet {addr}/{prefix} has host bits set")]
    HostBits { addr: IpAddr, prefix: u8 },
}

/// A WireGuard (Curve25519) public key, written as `wg` prints it: standard
/// base64 with padding, 44 characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WgKey(pub [u8; 32]);

impl WgKey {
    pub const ENCODED_LEN: usize = 44;
}

impl fmt::Display for WgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

// Public keys are not secret, and seeing them is how an operator matches a
// message to `wg show`.
impl fmt::Debug for WgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WgKey({self})")
    }
}

impl FromStr for WgKey {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        if s.len() != Self::ENCODED_LEN {
            return Err(ParseError::Length { encoding: "base64", expected: Self::ENCODED_LEN, got: s.len() });
        }
        // The standard engine refuses non-zero trailing bits, so every key has
        // exactly one accepted spelling and a round trip is the identity.
        let mut key = [0u8; 32];
        match STANDARD.decode_slice(s, &mut key) {
            Ok(32) => Ok(WgKey(key)),
            _ => Err(ParseError::Encoding("base64 for a 32-byte key")),
        }
    }
}

impl TryFrom<String> for WgKey {
    type Error = ParseError;

    fn try_from(s: String) -> Result<Self, ParseError> {
        s.parse()
    }
}

impl From<WgKey> for String {
    fn from(key: WgKey) -> String {
        key.to_string()
    }
}

macro_rules! hex_bytes {
    ($(#[$doc:meta])* $name:ident, $len:expr, $debug:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(pub [u8; $len]);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let debug: fn(&$name, &mut fmt::Formatter<'_>) -> fmt::Result = $debug;
                debug(self, f)
            }
        }

        impl FromStr for $name {
            type Err = ParseError;

            fn from_str(s: &str) -> Result<Self, ParseError> {
                if s.len() != 2 * $len {
                    return Err(ParseError::Length { encoding: "hex", expected: 2 * $len, got: s.len() });
                }
                let mut bytes = [0u8; $len];
                hex::decode_to_slice(s, &mut bytes).map_err(|_| ParseError::Encoding("hex"))?;
                Ok($name(bytes))
            }
        }

        impl TryFrom<String> for $name {
            type Error = ParseError;

            fn try_from(s: String) -> Result<Self, ParseError> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.to_string()
            }
        }
    };
}

hex_bytes!(
    /// The 32 random bytes the cloud sends first; the gateway signs them to
    /// prove it holds its identity key on this connection.
    Challenge,
    32,
    |c, f| write!(f, "Challenge({c})")
);

hex_bytes!(
    /// A gateway's Ed25519 verifying (public) key, the identity the cloud
    /// enrolled.
    IdentityKey,
    32,
    |k, f| write!(f, "IdentityKey({k})")
);

hex_bytes!(
    /// An Ed25519 signature over [`gateway_auth_message`](crate::gateway::gateway_auth_message).
    SignatureBytes,
    64,
    // Kept out of logs with the other credentials: a signature is only good
    // for one challenge, but logs are no place to collect them.
    |_, f| f.write_str("SignatureBytes(<redacted>)")
);

impl Challenge {
    /// A fresh challenge from a cryptographic random source.
    pub fn random(rng: &mut (impl rand_core::RngCore + rand_core::CryptoRng)) -> Challenge {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        Challenge(bytes)
    }
}

/// A bearer secret (relay token, WebSocket token). Its `Debug` never shows
/// the value and equality takes the same time wherever the first difference
/// is, so it can be compared against a stored token directly.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Token(String);

impl Token {
    pub fn new(token: impl Into<String>) -> Token {
        Token(token.into())
    }

    /// The secret itself, for sending it where it belongs.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl PartialEq for Token {
    fn eq(&self, other: &Token) -> bool {
        // The length is not a secret worth hiding; the content is.
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl Eq for Token {}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// An IP subnet such as `10.77.0.0/24` or `fd00:77::/64`, written as a string
/// in that form. Host bits must be zero so that a subnet has one spelling.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subnet {
    addr: IpAddr,
    prefix: u8,
}

impl Subnet {
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Subnet, ParseError> {
        let (family, max) = match addr {
            IpAddr::V4(_) => (4, 32),
            IpAddr::V6(_) => (6, 128),
        };
        if prefix > max {
            return Err(ParseError::PrefixTooLong { prefix, family, max });
        }
        let subnet = Subnet { addr, prefix };
        if subnet.network_bits(addr) != bits(addr) {
            return Err(ParseError::HostBits { addr, prefix });
        }
        Ok(subnet)
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies inside this subnet (always false across families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.addr.is_ipv4() == ip.is_ipv4() && self.network_bits(ip) == bits(self.addr)
    }

    fn network_bits(&self, ip: IpAddr) -> u128 {
        let width = if ip.is_ipv4() { 32 } else { 128 };
        let host = u32::from(width - self.prefix);
        let mask = u128::MAX.checked_shl(host).unwrap_or(0);
        bits(ip) & mask
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl fmt::Debug for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Subnet({self})")
    }
}

impl FromStr for Subnet {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let (addr, prefix) = s.split_once('/').ok_or(ParseError::SubnetSyntax)?;
        let addr: IpAddr = addr.parse().map_err(|_| ParseError::SubnetSyntax)?;
        // `u8::from_str` takes a leading `+` and zeros; a subnet has one spelling.
        let canonical = !prefix.is_empty()
            && prefix.len() <= 3
            && prefix.bytes().all(|b| b.is_ascii_digit())
            && (prefix == "0" || !prefix.starts_with('0'));
        if !canonical {
            return Err(ParseError::SubnetSyntax);
        }
        let prefix: u8 = prefix.parse().map_err(|_| ParseError::SubnetSyntax)?;
        Subnet::new(addr, prefix)
    }
}

impl TryFrom<String> for Subnet {
    type Error = ParseError;

    fn try_from(s: String) -> Result<Self, ParseError> {
        s.parse()
    }
}

impl From<Subnet> for String {
    fn from(subnet: Subnet) -> String {
        subnet.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wg_key_is_44_chars_of_standard_base64() {
        let key = WgKey([0xfb; 32]);
        let text = key.to_string();
        assert_eq!(text.len(), 44);
        assert!(text.ends_with('='));
        assert!(text.contains('+') || text.contains('/'), "standard, not URL-safe, alphabet: {text}");
        assert_eq!(text.parse::<WgKey>().unwrap(), key);
        assert_eq!(serde_json::to_string(&key).unwrap(), format!("\"{text}\""));
    }

    #[test]
    fn wg_key_refuses_wrong_length_alphabet_and_trailing_bits() {
        assert!(matches!("abc".parse::<WgKey>(), Err(ParseError::Length { got: 3, .. })));
        let good = WgKey([7; 32]).to_string();
        let url_safe = good.replace('+', "-").replace('/', "_");
        let mut bad = good.clone();
        bad.replace_range(0..1, "*");
        assert!(bad.parse::<WgKey>().is_err());
        if url_safe != good {
            assert!(url_safe.parse::<WgKey>().is_err());
        }
        // 'B' before the '=' leaves a set trailing bit: a second spelling of the same key.
        let mut trailing = "A".repeat(42);
        trailing.push_str("B=");
        assert!(trailing.parse::<WgKey>().is_err());
        let no_padding = format!("{}A", &good[..43]);
        assert!(no_padding.parse::<WgKey>().is_err());
    }

    #[test]
    fn hex_types_round_trip_and_check_length() {
        let challenge = Challenge([0xab; 32]);
        assert_eq!(challenge.to_string(), "ab".repeat(32));
        assert_eq!("AB".repeat(32).parse::<Challenge>().unwrap(), challenge);
        assert!("ab".repeat(31).parse::<Challenge>().is_err());
        assert!("zz".repeat(32).parse::<Challenge>().is_err());
        let sig = SignatureBytes([1; 64]);
        assert_eq!(sig.to_string().parse::<SignatureBytes>().unwrap(), sig);
        assert!(sig.to_string()[..64].parse::<SignatureBytes>().is_err());
    }

    #[test]
    fn debug_redacts_secrets() {
        let token = Token::new("hunter2-very-secret");
        assert!(!format!("{token:?}").contains("hunter2"));
        let sig = SignatureBytes([0x5a; 64]);
        assert!(!format!("{sig:?}").contains("5a5a"));
    }

    #[test]
    fn token_equality() {
        assert_eq!(Token::new("abc"), Token::new("abc"));
        assert_ne!(Token::new("abc"), Token::new("abd"));
        assert_ne!(Token::new("abc"), Token::new("abcd"));
    }

    #[test]
    fn subnet_parses_and_refuses_host_bits_and_long_prefixes() {
        let s: Subnet = "10.77.0.0/24".parse().unwrap();
        assert_eq!(s.prefix(), 24);
        assert_eq!(s.to_string(), "10.77.0.0/24");
        assert!(s.contains("10.77.0.200".parse().unwrap()));
        assert!(!s.contains("10.78.0.1".parse().unwrap()));
        assert!(!s.contains("::1".parse().unwrap()));
        assert!("fd00:77::/64".parse::<Subnet>().unwrap().contains("fd00:77::5".parse().unwrap()));
        assert!(matches!("10.77.0.1/24".parse::<Subnet>(), Err(ParseError::HostBits { .. })));
        assert!(matches!("10.0.0.0/33".parse::<Subnet>(), Err(ParseError::PrefixTooLong { .. })));
        assert!(matches!("::/129".parse::<Subnet>(), Err(ParseError::PrefixTooLong { .. })));
        assert!("0.0.0.0/0".parse::<Subnet>().unwrap().contains("192.0.2.1".parse().unwrap()));
        assert!("::/0".parse::<Subnet>().is_ok());
        assert!("192.0.2.1/32".parse::<Subnet>().is_ok());
        for bad in ["10.0.0.0", "10.0.0.0/", "10.0.0.0/+8", "10.0.0.0/008", "x/8", "10.0.0.0/8/8", "/8"] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_are_plain_numbers() {
        assert_eq!(serde_json::to_string(&SessionId(42)).unwrap(), "42");
        assert_eq!(serde_json::from_str::<GatewayId>("7").unwrap(), GatewayId(7));
        assert!(serde_json::from_str::<GatewayId>("\"7\"").is_err());
        assert!(serde_json::from_str::<GatewayId>("-1").is_err());
    }
}
