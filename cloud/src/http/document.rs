//! The refusals every operation shares, added to the OpenAPI document once
//! rather than repeated in each handler's annotation, so that the document
//! tells the whole truth to a generated client (schemathesis checks it:
//! tests/schemathesis.rs):
//! - every error is an RFC 9457 problem, served as `application/problem+json`;
//! - an operation that needs a credential may answer 401, and one that
//!   needs a user 403 (a one-time password must be changed first);
//! - a JSON body may be refused as not JSON (400), not declared as JSON
//!   (415), of the wrong shape (422) or too large (413), or not be read
//!   in time (408), or find the server holding as many bodies as it will
//!   (503, see `extract::BodyBudget`);
//! - a path or query parameter that does not parse is refused with 400.

use serde_json::{Map, Value, json};

const PROBLEM: &str = "application/problem+json";
const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// Completes `doc` (the generated document as JSON) in place.
pub fn complete(doc: &mut Value) {
    unsigned_formats(doc);
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else { return };
    for item in paths.values_mut() {
        for method in METHODS {
            if let Some(operation) = item.get_mut(method).and_then(Value::as_object_mut) {
                complete_operation(operation);
            }
        }
    }
}

fn complete_operation(operation: &mut Map<String, Value>) {
    let schemes: Vec<String> = operation
        .get("security")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .flat_map(|requirement| requirement.keys().cloned())
        .collect();
    let has_body = operation.contains_key("requestBody");
    let has_parameters = operation.get("parameters").and_then(Value::as_array).is_some_and(|p| !p.is_empty());
    let responses = operation.entry("responses").or_insert_with(|| json!({}));
    let Some(responses) = responses.as_object_mut() else { return };
    for (status, response) in responses.iter_mut() {
        if status.starts_with('4') || status.starts_with('5') {
            as_problem(response);
        }
    }
    let mut add = |status: &str, description: &str| {
        responses.entry(status.to_string()).or_insert_with(|| problem(description));
    };
    if !schemes.is_empty() {
        add("401", "No credential, or one that is not (or no longer) valid");
    }
    if schemes.iter().any(|s| s == "bearer") {
        add("403", "The caller may not do this, or must first change a one-time password");
    }
    if has_body {
        add("400", "The body is not JSON, or a value is out of its range");
        add("408", "The body did not arrive in time");
        add("413", "The body is larger than the server accepts");
        add("415", "The body is not declared as `Content-Type: application/json`");
        add("422", "The body is JSON of the wrong shape: a field missing, unknown or of the wrong type");
        add("503", "The server holds as many request bodies as it will now (in all or from this address)");
    }
    if has_parameters {
        add("400", "A path or query parameter does not parse");
    }
}

/// utoipa writes an unsigned integer's format as `u-int64` (and so on),
/// with only its minimum: named `uint64` here, with its maximum, so that a
/// client knows the whole range the server takes (a `u64` id may exceed
/// `int64`, and nothing beyond `u64` parses).
fn unsigned_formats(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let maximum = match map.get("format").and_then(Value::as_str) {
                Some("u-int64") => Some(("uint64", u64::MAX)),
                Some("u-int32") => Some(("uint32", u64::from(u32::MAX))),
                Some("u-int16") => Some(("uint16", u64::from(u16::MAX))),
                Some("u-int8") => Some(("uint8", u64::from(u8::MAX))),
                _ => None,
            };
            if let Some((format, maximum)) = maximum {
                map.insert("format".into(), format.into());
                map.entry("maximum").or_insert_with(|| maximum.into());
            }
            map.values_mut().for_each(unsigned_formats);
        }
        Value::Array(items) => items.iter_mut().for_each(unsigned_formats),
        _ => {}
    }
}

fn problem(description: &str) -> Value {
    json!({
        "description": description,
        "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    })
}

/// An error response's body is a problem document, whatever the handler's
/// annotation called its media type.
fn as_problem(response: &mut Value) {
    let Some(content) = response.get_mut("content").and_then(Value::as_object_mut) else { return };
    if let Some(json) = content.remove("application/json") {
        content.insert(PROBLEM.to_string(), json);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operation_gets_the_refusals_it_can_meet() {
        let mut doc = json!({"paths": {"/x/{id}": {
            "post": {
                "parameters": [{"name": "id", "in": "path"}],
                "requestBody": {"content": {"application/json": {}}},
                "security": [{"bearer": []}],
                "responses": {"200": {"content": {"application/json": {}}},
                    "409": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}},
            },
            "get": {"responses": {"200": {}}},
        }}});
        complete(&mut doc);
        let post = &doc["paths"]["/x/{id}"]["post"]["responses"];
        for status in ["400", "401", "403", "408", "409", "413", "415", "422", "503"] {
            assert!(post[status]["content"][PROBLEM].is_object(), "{status}: {post}");
            assert!(post[status]["content"].get("application/json").is_none(), "{status}");
        }
        assert!(post["200"]["content"]["application/json"].is_object());
        // Nothing to refuse in an anonymous GET without parameters.
        let get = doc["paths"]["/x/{id}"]["get"]["responses"].as_object().unwrap();
        assert_eq!(get.keys().collect::<Vec<_>>(), ["200"]);
    }

    #[test]
    fn unsigned_integers_say_their_whole_range() {
        let mut doc = json!({"components": {"schemas": {"X": {"properties": {
            "id": {"type": "integer", "format": "u-int64", "minimum": 0},
            "port": {"type": "integer", "format": "u-int16", "minimum": 1, "maximum": 1000},
            "n": {"type": "integer", "format": "int64"},
        }}}}});
        complete(&mut doc);
        let properties = &doc["components"]["schemas"]["X"]["properties"];
        assert_eq!(
            properties["id"],
            json!({"type": "integer", "format": "uint64", "minimum": 0, "maximum": u64::MAX})
        );
        // A maximum of its own stays.
        assert_eq!(properties["port"]["maximum"], 1000);
        assert_eq!(properties["port"]["format"], "uint16");
        assert_eq!(properties["n"], json!({"type": "integer", "format": "int64"}));
    }

    #[test]
    fn a_watch_token_operation_may_answer_401_but_not_403() {
        let mut doc = json!({"paths": {"/c": {"get": {"security": [{"watch_token": []}], "responses": {}}}}});
        complete(&mut doc);
        let responses = doc["paths"]["/c"]["get"]["responses"].as_object().unwrap();
        assert_eq!(responses.keys().collect::<Vec<_>>(), ["401"]);
    }
}
