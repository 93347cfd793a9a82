//! The command line.

use std::path::PathBuf;
use std::time::Duration;

/// Load generator for msstore-facade's `GetOfflineLicense`: the facade against the same calls
/// sent straight to the upstream. Prints one JSON report on stdout and a table on stderr.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "loadgen")]
pub struct Options {
    /// The facade binary to measure [default: `msstore-facade` in the directory above this
    /// example's, i.e. target/release/msstore-facade]
    #[arg(long)]
    pub facade_bin: Option<PathBuf>,

    /// Store for Business base URL of the upstream to use instead of a spawned emulator. The
    /// credentials come from AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET and
    /// AZURE_AUTHORITY_HOST (default https://login.microsoftonline.com)
    #[arg(long)]
    pub upstream_url: Option<String>,

    /// Closed loop: calls in flight at any time
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,

    /// Closed loop: calls per target (facade, then direct)
    #[arg(long, default_value_t = 20_000)]
    pub calls: u64,

    /// Calls per target before the measured closed loop (connections, caches, allocator)
    #[arg(long, default_value_t = 2_000)]
    pub warmup_calls: u64,

    /// Open loop: calls per second, sent on schedule whatever the answers do
    #[arg(long, default_value_t = 1_000)]
    pub rate: u64,

    /// Open loop: how long, per target
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub open_duration: Duration,

    /// Distinct calls held in flight at once while the facade's memory is sampled (0: skip)
    #[arg(long, default_value_t = 1_000)]
    pub inflight_calls: u64,

    /// How long the emulator holds each of those calls (its `MAGIC-SLOW-<ms>` product id)
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub inflight_delay: Duration,

    /// Product id that makes the upstream answer slowly, for the in-flight figure against
    /// `--upstream-url` [default with the emulator: MAGIC-SLOW-<inflight-delay in ms>]
    #[arg(long)]
    pub inflight_product_id: Option<String>,

    /// Also count the facade's instructions per call under valgrind's callgrind
    #[arg(long)]
    pub instructions: bool,

    /// Only count instructions per call (implies --instructions; no load phases)
    #[arg(long)]
    pub instructions_only: bool,

    /// Callgrind: calls before the counters are zeroed
    #[arg(long, default_value_t = 500)]
    pub callgrind_warmup_calls: u64,

    /// Callgrind: calls counted after the zeroing
    #[arg(long, default_value_t = 2_000)]
    pub callgrind_calls: u64,

    /// The core the facade is pinned to; the load generator and the emulator get the others
    /// [default: the first core this process may use]
    #[arg(long)]
    pub facade_core: Option<usize>,

    /// Product id of every call (the content id makes each call distinct)
    #[arg(long, default_value = "9NBLGGH4R2R6")]
    pub product_id: String,

    /// SKU id of every call
    #[arg(long, default_value = "0016")]
    pub sku_id: String,

    /// Content ids are `<prefix>-<phase>-<n>`: every call of a phase differs, so the facade's
    /// request coalescing cannot merge any
    #[arg(long, default_value = "lg")]
    pub content_prefix: String,

    /// RUST_LOG of the facade and the emulator
    #[arg(long, default_value = "warn")]
    pub log_filter: String,

    /// More environment for the facade, e.g. `--facade-env MSSTORE_MAX_ATTEMPTS=1` (repeatable)
    #[arg(long = "facade-env", value_parser = key_value)]
    pub facade_env: Vec<(String, String)>,

    /// Also write the JSON report to this file
    #[arg(long)]
    pub json_out: Option<PathBuf>,

    /// Where the children's logs and callgrind's output go [default: a new directory under
    /// the system's temporary directory]
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
}

impl Options {
    /// Whether the load phases run (all but `--instructions-only`).
    pub fn load_phases(&self) -> bool {
        !self.instructions_only
    }

    /// Whether the callgrind phase runs.
    pub fn count_instructions(&self) -> bool {
        self.instructions || self.instructions_only
    }
}

fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected NAME=VALUE, got {text:?}")),
    }
}
