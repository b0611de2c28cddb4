//! Frames on the wire: one JSON object per WebSocket text frame,
//! `{"v":1,"type":"...",...}`.
//!
//! The version is checked before anything else about the frame, so a peer
//! that speaks another version always gets [`DecodeError::Version`] (and can
//! say so) rather than a confusing complaint about a field it does not know.

use std::fmt;

use serde::de::{self, DeserializeOwned, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::validate::{InvalidMessage, Validate};
use crate::{MAX_MESSAGE_BYTES, PROTOCOL_VERSION};

/// One of the channel enums ([`ToGateway`](crate::gateway::ToGateway),
/// [`FromGateway`](crate::gateway::FromGateway),
/// [`ToRelay`](crate::relay::ToRelay), [`FromRelay`](crate::relay::FromRelay)).
pub trait Message: Serialize + DeserializeOwned + Validate {
    /// Every `type` this enum accepts, so that an unknown type is reported as
    /// such rather than as a generic parse error.
    const TYPES: &'static [&'static str];

    /// The `type` this message is sent as.
    fn type_name(&self) -> &'static str;
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame is not valid JSON: {0}")]
    Json(String),
    #[error("frame is not a JSON object")]
    NotAnObject,
    #[error("frame has no protocol version `v`")]
    MissingVersion,
    #[error("frame's protocol version `v` is not an unsigned integer")]
    BadVersion,
    #[error("protocol version {got} is not supported (this side speaks version {supported})")]
    Version { got: u64, supported: u16 },
    #[error("frame has no message `type` string")]
    MissingType,
    #[error("unknown message type `{0}`")]
    UnknownType(String),
    #[error("unknown field in `{kind}` message: {detail}")]
    UnknownField { kind: String, detail: String },
    #[error("malformed `{kind}` message: {detail}")]
    Malformed { kind: String, detail: String },
    #[error("`{kind}` message breaks a protocol limit: {source}")]
    Invalid {
        kind: &'static str,
        #[source]
        source: InvalidMessage,
    },
}

/// Writes `msg` as one frame.
///
/// # Panics
///
/// Never for this crate's messages, which all serialize to JSON objects with
/// string keys (the round-trip property tests cover every variant); a
/// hand-written [`Message`] that is not an object would panic here.
#[allow(clippy::expect_used, reason = "this crate's messages all serialize to JSON objects (see Panics)")]
pub fn encode<T: Message>(msg: &T) -> String {
    #[derive(Serialize)]
    struct Envelope<'a, T> {
        v: u16,
        #[serde(flatten)]
        msg: &'a T,
    }
    serde_json::to_string(&Envelope { v: PROTOCOL_VERSION, msg })
        .expect("protocol messages serialize to JSON objects")
}

/// Reads one frame. Checks, in order: size (before parsing), JSON syntax
/// (duplicate keys are refused so the frame has one meaning), the version, the
/// type, then every field (unknown fields are refused). It never panics; the
/// error strings are capped so a hostile frame cannot fill a log.
pub fn decode<T: Message>(frame: &str) -> Result<T, DecodeError> {
    if frame.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge { len: frame.len(), max: MAX_MESSAGE_BYTES });
    }
    let StrictValue(value) =
        serde_json::from_str(frame).map_err(|e| DecodeError::Json(truncate(e.to_string())))?;
    let Value::Object(mut object) = value else {
        return Err(DecodeError::NotAnObject);
    };
    let version = object.remove("v").ok_or(DecodeError::MissingVersion)?;
    let version = version.as_u64().ok_or(DecodeError::BadVersion)?;
    if version != u64::from(PROTOCOL_VERSION) {
        return Err(DecodeError::Version { got: version, supported: PROTOCOL_VERSION });
    }
    let kind = match object.get("type") {
        Some(Value::String(kind)) => kind.clone(),
        _ => return Err(DecodeError::MissingType),
    };
    if !T::TYPES.contains(&kind.as_str()) {
        return Err(DecodeError::UnknownType(truncate(kind)));
    }
    T::deserialize(Value::Object(object)).map_err(|e| {
        let detail = truncate(e.to_string());
        if detail.starts_with("unknown field") {
            DecodeError::UnknownField { kind, detail }
        } else {
            DecodeError::Malformed { kind, detail }
        }
    })
}

/// [`decode`] then [`Validate::validate`]: what a receiver calls.
pub fn decode_valid<T: Message>(frame: &str) -> Result<T, DecodeError> {
    let msg: T = decode(frame)?;
    msg.validate().map_err(|source| DecodeError::Invalid { kind: msg.type_name(), source })?;
    Ok(msg)
}

const MAX_ERROR_CHARS: usize = 200;

fn truncate(mut s: String) -> String {
    if let Some((cut, _)) = s.char_indices().nth(MAX_ERROR_CHARS) {
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// A JSON value that refuses duplicate object keys, which `serde_json::Value`
/// silently collapses to the last one.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate key `{}`", truncate(key))));
            }
            let StrictValue(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::{Applied, FromGateway};

    fn applied(revision: u64) -> FromGateway {
        FromGateway::Applied(Applied { revision })
    }

    #[test]
    fn frames_carry_the_version_first() {
        assert_eq!(encode(&applied(7)), r#"{"v":1,"type":"applied","revision":7}"#);
        assert_eq!(decode::<FromGateway>(r#"{"type":"applied","revision":7,"v":1}"#).unwrap(), applied(7));
    }

    #[test]
    fn other_versions_are_named_before_anything_else() {
        // Even a type and fields this side has never heard of.
        let err = decode::<FromGateway>(r#"{"v":2,"type":"teleport","warp":9}"#).unwrap_err();
        assert_eq!(err, DecodeError::Version { got: 2, supported: 1 });
        assert_eq!(err.to_string(), "protocol version 2 is not supported (this side speaks version 1)");
        assert_eq!(decode::<FromGateway>(r#"{"type":"applied"}"#).unwrap_err(), DecodeError::MissingVersion);
        assert_eq!(
            decode::<FromGateway>(r#"{"v":"1","type":"applied"}"#).unwrap_err(),
            DecodeError::BadVersion
        );
        assert_eq!(decode::<FromGateway>(r#"{"v":-1}"#).unwrap_err(), DecodeError::BadVersion);
        assert_eq!(decode::<FromGateway>(r#"{"v":1.0}"#).unwrap_err(), DecodeError::BadVersion);
    }

    #[test]
    fn refusals_are_typed() {
        let too_big = " ".repeat(MAX_MESSAGE_BYTES + 1);
        assert!(matches!(decode::<FromGateway>(&too_big), Err(DecodeError::TooLarge { .. })));
        assert!(matches!(decode::<FromGateway>("{"), Err(DecodeError::Json(_))));
        assert_eq!(decode::<FromGateway>("[1]").unwrap_err(), DecodeError::NotAnObject);
        assert_eq!(decode::<FromGateway>(r#"{"v":1}"#).unwrap_err(), DecodeError::MissingType);
        assert_eq!(decode::<FromGateway>(r#"{"v":1,"type":3}"#).unwrap_err(), DecodeError::MissingType);
        assert_eq!(
            decode::<FromGateway>(r#"{"v":1,"type":"welcome","peer_id":1}"#).unwrap_err(),
            DecodeError::UnknownType("welcome".into()),
        );
        let unknown = decode::<FromGateway>(r#"{"v":1,"type":"applied","revision":1,"extra":0}"#);
        assert!(
            matches!(&unknown, Err(DecodeError::UnknownField { kind, detail })
                if kind == "applied" && detail.contains("extra")),
            "{unknown:?}"
        );
        let malformed = decode::<FromGateway>(r#"{"v":1,"type":"applied","revision":"x"}"#);
        assert!(matches!(malformed, Err(DecodeError::Malformed { .. })), "{malformed:?}");
        let missing = decode::<FromGateway>(r#"{"v":1,"type":"applied"}"#);
        assert!(matches!(missing, Err(DecodeError::Malformed { .. })), "{missing:?}");
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        let top = decode::<FromGateway>(r#"{"v":1,"v":2,"type":"applied","revision":1}"#);
        assert!(matches!(&top, Err(DecodeError::Json(e)) if e.contains("duplicate key `v`")), "{top:?}");
        let nested = r#"{"v":1,"type":"event","seq":1,"time_ms":0,"event":{"kind":"switch_changed","on":true,"on":false}}"#;
        assert!(matches!(decode::<FromGateway>(nested), Err(DecodeError::Json(_))));
    }

    #[test]
    fn error_text_is_capped() {
        let long_type = format!(r#"{{"v":1,"type":"{}"}}"#, "x".repeat(10_000));
        let err = decode::<FromGateway>(&long_type).unwrap_err();
        assert!(err.to_string().len() < 300, "{}", err.to_string().len());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = format!(
            r#"{{"v":1,"type":"applied","revision":{}1{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(matches!(decode::<FromGateway>(&deep), Err(DecodeError::Json(_))));
    }
}
