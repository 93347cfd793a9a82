//! Load generator for msstore-facade: drives `GetOfflineLicense` through the facade (a child
//! process pinned to one core) and the same calls straight to the upstream, and reports
//! throughput, latency, CPU and memory per call, start-up time and, under callgrind,
//! instructions per call. README, "Performance" says how to run it and what each figure means.
//!
//! `tests/loadgen_smoke.rs` includes this file as a module, so the modules are `pub` and name
//! each other through `super::`, never `crate::`.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod callgrind;
pub mod children;
pub mod facade;
pub mod load;
pub mod options;
pub mod pinning;
pub mod report;
pub mod run;
pub mod target;
pub mod upstream;

/// Errors of the load generator: each says what failed, for a person to read.
pub type Fallible<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() -> std::process::ExitCode {
    let options = <options::Options as clap::Parser>::parse();
    match run::run(&options) {
        Ok(report) => {
            let json = serde_json::to_string_pretty(&report.to_json()).expect("JSON values print");
            if let Some(path) = &options.json_out {
                if let Err(error) = std::fs::write(path, format!("{json}\n")) {
                    eprintln!("loadgen: cannot write {}: {error}", path.display());
                    return std::process::ExitCode::from(2);
                }
            }
            println!("{json}");
            eprintln!("\n{}", report.markdown_table());
            if report.all_calls_ok() {
                std::process::ExitCode::SUCCESS
            } else {
                eprintln!("loadgen: some calls did not answer OK (see \"outcomes\" in the report)");
                std::process::ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("loadgen: {error}");
            std::process::ExitCode::from(2)
        }
    }
}
