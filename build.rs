//! Compiles `proto/msstore` with the pure-Rust `protox` (no `protoc` needed) and writes the
//! descriptor set that server reflection serves: our API plus the `google.rpc` error-detail
//! messages, so reflection-driven tools (grpcurl) can decode rich error details. Also writes,
//! per package, the method names of every service as the protos spell them
//! (`<package>.methods.rs`): the operation registry takes its names from there, so that a
//! method's metric labels and spans cannot drift from the proto.

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
    write_method_names(&api, &out_dir)?;
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

/// Writes `<package>.methods.rs` for every package: `SERVICE_COUNT`, and a module per service
/// named like tonic's server module (`store_keys_server`) holding one `&str` per method, named
/// like the method of tonic's service trait (`renew_key = "RenewKey"`).
fn write_method_names(api: &prost_types::FileDescriptorSet, out_dir: &Path) -> std::io::Result<()> {
    let mut packages: std::collections::BTreeMap<&str, Vec<&prost_types::ServiceDescriptorProto>> =
        std::collections::BTreeMap::new();
    for file in &api.file {
        packages
            .entry(file.package())
            .or_default()
            .extend(file.service.iter());
    }
    for (package, services) in packages {
        let mut text = format!(
            "/// How many services the protos of this package declare.\n\
             pub const SERVICE_COUNT: usize = {};\n",
            services.len()
        );
        for service in services {
            text.push_str(&format!(
                "/// The methods of `{package}.{name}`.\n#[allow(non_upper_case_globals)]\n\
                 pub mod {module}_server {{\n",
                name = service.name(),
                module = snake_case(service.name()),
            ));
            for method in &service.method {
                text.push_str(&format!(
                    "    /// `{name}`.\n    pub const {ident}: &str = \"{name}\";\n",
                    name = method.name(),
                    ident = snake_case(method.name()),
                ));
            }
            text.push_str("}\n");
        }
        std::fs::write(out_dir.join(format!("{package}.methods.rs")), text)?;
    }
    Ok(())
}

/// `GetOfflineLicense` -> `get_offline_license`, as tonic names trait methods and modules.
fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() {
            let prev_lower =
                i > 0 && (chars[i - 1].is_ascii_lowercase() || chars[i - 1].is_ascii_digit());
            let next_lower = chars.get(i + 1).is_some_and(char::is_ascii_lowercase);
            let prev_upper = i > 0 && chars[i - 1].is_ascii_uppercase();
            if prev_lower || (prev_upper && next_lower) {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}
