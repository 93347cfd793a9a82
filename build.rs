//! Compiles `proto/msstore` with the pure-Rust `protox` (no `protoc` needed) and writes the
//! descriptor set that server reflection serves: our API plus the `google.rpc` error-detail
//! messages, so reflection-driven tools (grpcurl) can decode rich error details.

use std::path::{Path, PathBuf};

use prost::Message;

/// The public API: every `.proto` file under this folder.
const API_DIR: &str = "proto/msstore";
const ERROR_DETAILS: &str = "proto/third_party/google/rpc/error_details.proto";
const INCLUDES: [&str; 2] = ["proto", "proto/third_party"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut api_files = Vec::new();
    proto_files(Path::new(API_DIR), &mut api_files)?;
    api_files.sort();
    let api = protox::compile(&api_files, INCLUDES)?;
    let reflected = protox::compile(
        api_files
            .iter()
            .map(PathBuf::as_path)
            .chain([Path::new(ERROR_DETAILS)]),
        INCLUDES,
    )?;
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

/// Every `.proto` file below `dir`, so that a new API file needs no edit here.
fn proto_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            proto_files(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
