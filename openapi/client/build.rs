//! Generates the client from `../openapi.json` with progenitor, into
//! `$OUT_DIR/client.rs`, which `src/lib.rs` includes.
//!
//! The spec is the committed one, which the api package's drift test keeps
//! equal to what `savestream-api --print-openapi` prints.

use std::path::Path;

fn main() {
    let spec_path = Path::new("../openapi.json");
    println!("cargo:rerun-if-changed={}", spec_path.display());
    let text = std::fs::read_to_string(spec_path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", spec_path.display()));
    let spec: openapiv3::OpenAPI = serde_json::from_str(&text)
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
