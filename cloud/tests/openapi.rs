//! The OpenAPI document covers every route, and every documented
//! operation is served.

mod common;

use common::Api;
use serde_json::{Value, json};

/// Every operation in the document exists: asked without credentials, the
/// router answers with the handler's own refusal, never with its fallback
/// ("no route") or 405.
#[test]
fn every_documented_operation_is_served() {
    let api = Api::start();
    let doc = api.call("GET", "/api/v1/openapi.json", None, None);
    assert_eq!(doc.status, 200);
    assert_eq!(doc.body["openapi"].as_str().map(|v| v.starts_with("3.")), Some(true));
    let paths = doc.body["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        for method in ["get", "post", "patch", "put", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            operations += 1;
            // Every path parameter (`{id}`, `{config_id}`) is a number.
            let concrete: String = path
                .split('/')
                .map(|segment| if segment.starts_with('{') { "1" } else { segment })
                .collect::<Vec<_>>()
                .join("/");
            let body = (method != "get" && method != "delete").then(|| json!({}));
            let reply = api.call(&method.to_uppercase(), &concrete, None, body);
            assert_ne!(reply.status, 405, "{method} {path}");
            let fallback = reply.body["detail"].as_str().is_some_and(|d| d.starts_with("no route for"));
            assert!(!fallback, "{method} {path} is documented but not served: {reply:?}");
        }
    }
    assert!(operations >= 30, "{operations} operations");
    // The document names its problems and its security scheme.
    assert!(doc.body["components"]["schemas"]["Problem"].is_object());
    assert!(doc.body["components"]["securitySchemes"]["bearer"].is_object());
}

/// Every route is registered through utoipa-axum's `routes!`, which puts it
/// in the document by construction; a route added with plain axum calls
/// would bypass that, so none may exist.
#[test]
fn no_route_bypasses_the_document() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut checked = 0;
    for dir in ["http", "channels"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let source = std::fs::read_to_string(&path).unwrap().replace("OpenApiRouter::new()", "");
            for forbidden in [".route(", ".nest(", ".route_service(", ".nest_service(", "Router::new()"] {
                assert!(!source.contains(forbidden), "{} uses `{forbidden}`", path.display());
            }
            checked += 1;
        }
    }
    assert!(checked >= 8);
    // And the router has no other source of routes: it is assembled only
    // from those modules.
    let assembly = std::fs::read_to_string(root.join("http/mod.rs")).unwrap();
    assert!(assembly.contains("OpenApiRouter::with_openapi"));
}

#[test]
fn unknown_routes_are_problems() {
    let api = Api::start();
    let reply = api.call("GET", "/api/v1/nothing-here", None, None);
    assert_eq!(reply.status, 404);
    assert_eq!(reply.content_type, "application/problem+json");
    assert_eq!(reply.body["title"], Value::from("Not found"));
}

/// The console's endpoints are API operations like the others, documented
/// with what they answer.
#[test]
fn the_consoles_endpoints_are_documented() {
    let api = Api::start();
    let doc = api.call("GET", "/api/v1/openapi.json", None, None).body;
    let paths = &doc["paths"];
    for (path, methods) in [
        ("/api/v1/auth/session", &["get", "post", "delete"][..]),
        ("/api/v1/events", &["get"]),
        ("/api/v1/users/{id}/password", &["post"]),
        ("/api/v1/users/releasable", &["get"]),
        ("/api/v1/me/totp/qr", &["get"]),
    ] {
        for method in methods {
            assert!(paths[path][method].is_object(), "{method} {path} is not documented");
        }
    }
    let events = &paths["/api/v1/events"]["get"]["responses"]["200"]["content"];
    assert!(events["text/event-stream"].is_object(), "{events}");
    let qr = &paths["/api/v1/me/totp/qr"]["get"]["responses"]["200"]["content"];
    assert!(qr["image/svg+xml"].is_object(), "{qr}");
    let login = &paths["/api/v1/auth/session"]["post"]["responses"]["200"];
    assert!(login["headers"]["Set-Cookie"].is_object(), "{login}");
    for schema in ["ConsoleSessionView", "ChangeEvent", "PasswordReset", "UserRef", "PeerReport", "PeerPath"]
    {
        assert!(doc["components"]["schemas"][schema].is_object(), "schema {schema} missing");
    }
}

/// The document states what the server enforces (schemathesis checks the
/// whole of it against a running cloud: tests/schemathesis.rs); a few of
/// those facts, pinned here so that a change to them is seen at once.
#[test]
fn the_document_states_the_refusals_and_limits_the_server_enforces() {
    let api = Api::start();
    let doc = api.call("GET", "/api/v1/openapi.json", None, None).body;
    let problem = |operation: &Value, status: &str| {
        operation["responses"][status]["content"]["application/problem+json"]["schema"]["$ref"]
            == "#/components/schemas/Problem"
    };
    let create_user = &doc["paths"]["/api/v1/users"]["post"];
    for status in ["400", "401", "403", "409", "413", "415", "422"] {
        assert!(problem(create_user, status), "POST /api/v1/users {status}: {create_user}");
    }
    assert!(create_user["responses"]["400"]["content"].get("application/json").is_none());
    let get_user = &doc["paths"]["/api/v1/users/{id}"]["get"];
    assert!(problem(get_user, "400") && problem(get_user, "401"), "{get_user}");
    assert_eq!(get_user["parameters"][0]["schema"]["format"], "uint64");
    assert_eq!(get_user["parameters"][0]["schema"]["maximum"], json!(u64::MAX));

    let schemas = &doc["components"]["schemas"];
    let name = &schemas["NewUser"]["properties"]["name"];
    assert_eq!((name["minLength"].as_u64(), name["maxLength"].as_u64()), (Some(1), Some(64)), "{name}");
    assert_eq!(schemas["NewUser"]["properties"]["password"]["minLength"], 12);
    assert_eq!(schemas["EnrolRequest"]["properties"]["identity_key"]["pattern"], "^[0-9A-Fa-f]{64}$");
    let address = &schemas["Target"]["properties"]["address"]["anyOf"];
    assert_eq!(address[0]["format"], "ipv4", "{address}");
    assert_eq!(address[1]["format"], "ipv6", "{address}");
    assert_eq!(schemas["NewSession"]["properties"]["max_duration_s"]["minimum"], 60);
    assert_eq!(schemas["PortRange"]["properties"]["first"]["minimum"], 1);
    // The console's own operations say they need its cookie.
    assert_eq!(doc["paths"]["/api/v1/auth/session"]["get"]["security"][0]["console"], json!([]));
    assert_eq!(doc["components"]["securitySchemes"]["console"]["in"], "cookie");
}
