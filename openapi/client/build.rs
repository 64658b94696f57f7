//! Generates the client from `../openapi.json` with progenitor, into
//! `$OUT_DIR/client.rs`, which `src/lib.rs` includes.
//!
//! The spec is the committed one, which the api package's drift test keeps
//! equal to what `savestream-api --print-openapi` prints. One thing is
//! taken out before generation: bodiless successes beside a success with a
//! body (see [`drop_bodiless_successes_beside_a_body`]).

use std::path::Path;

use serde_json::Value;

fn main() {
    let spec_path = Path::new("../openapi.json");
    println!("cargo:rerun-if-changed={}", spec_path.display());
    let text = std::fs::read_to_string(spec_path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", spec_path.display()));
    let mut document: Value = serde_json::from_str(&text)
        .unwrap_or_else(|error| panic!("{} is not JSON: {error}", spec_path.display()));
    drop_bodiless_successes_beside_a_body(&mut document);
    let spec: openapiv3::OpenAPI = serde_json::from_value(document)
        .unwrap_or_else(|error| panic!("{} is not an OpenAPI document: {error}", spec_path.display()));
    let mut settings = progenitor::GenerationSettings::default();
    settings.with_interface(progenitor::InterfaceStyle::Builder);
    let mut generator = progenitor::Generator::new(&settings);
    let tokens = generator
        .generate_tokens(&spec)
        .unwrap_or_else(|error| panic!("progenitor cannot generate a client from the spec: {error}"));
    let file = syn::parse2(tokens).expect("progenitor generates valid Rust");
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR for build scripts");
    std::fs::write(
        Path::new(&out_dir).join("client.rs"),
        prettyplease::unparse(&file),
    )
    .expect("writing the generated client into OUT_DIR");
}

/// Removes from each operation the 2xx responses without content when
/// another 2xx response of it has content.
///
/// progenitor gives an operation one success type and cannot generate one
/// whose successes differ (it asserts). `get_task_events` answers 204 only
/// to a Server-Sent Events request (its task has ended with nothing after
/// `Last-Event-ID`), which the generated client never makes: it reads the
/// JSON form, which is always a 200.
fn drop_bodiless_successes_beside_a_body(document: &mut Value) {
    let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    let operations = paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut());
    for operation in operations {
        let Some(responses) = operation.get_mut("responses").and_then(Value::as_object_mut) else {
            continue;
        };
        let is_success = |status: &str| status.starts_with('2');
        let has_content = |response: &Value| {
            response
                .get("content")
                .and_then(Value::as_object)
                .is_some_and(|content| !content.is_empty())
        };
        let any_with_content = responses
            .iter()
            .any(|(status, response)| is_success(status) && has_content(response));
        if any_with_content {
            responses.retain(|status, response| !is_success(status) || has_content(response));
        }
    }
}
