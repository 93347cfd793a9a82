//! Compiles `proto/msstore` with the pure-Rust `protox` (no `protoc` needed) and writes the
//! descriptor set that server reflection serves: our API plus the `google.rpc` error-detail
//! messages, so reflection-driven tools (grpcurl) can decode rich error details.

use prost::Message;

const API: [&str; 2] = [
    "proto/msstore/v1/store_entitlements.proto",
    "proto/msstore/v1/store_keys.proto",
];
const ERROR_DETAILS: &str = "proto/third_party/google/rpc/error_details.proto";
const INCLUDES: [&str; 2] = ["proto", "proto/third_party"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let api = protox::compile(API, INCLUDES)?;
    let reflected = protox::compile(API.iter().copied().chain([ERROR_DETAILS]), INCLUDES)?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("msstore_descriptor.bin"),
        reflected.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(api)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
