//! The example callers of `examples/python` and `examples/node` against the real binary with
//! `--sandbox`: each must call every RPC of every service successfully, decode ErrorInfo,
//! RetryInfo and BadRequest from the failures it provokes, retry only where RetryInfo allows,
//! and exit 0 (an example exits 1 when any call answers otherwise than it expects).
//!
//! The Python example runs in the virtualenv `tests/polyglot_python.rs` uses
//! (`<target dir>/python-venv`, from `examples/python/requirements.txt`). The Node example's
//! packages are installed with `npm ci` from its committed lock file into
//! `<target dir>/node-examples` on first use (never into the source tree) and found through
//! `NODE_PATH`. Without `python3` (3.10 or newer, with `venv`), `node` or `npm` the tests fail,
//! they never skip. Only loopback addresses are called (and PyPI and npm, to install once).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use common::tools::{install, python_client_venv, python_env, require_tool, run, target_dir};
use common::*;

/// The failures every example provokes: the RPC, the code, the start of each detail line as
/// printed (ErrorInfo first; its metadata sorted by key), and the attempts the retry rule makes.
const PROVOKED: [(&str, &str, &[&str], u32); 4] = [
    // BadRequest, one violation per bad field; no RetryInfo, so never retried.
    (
        "StoreEntitlements/GetOfflineLicense",
        "INVALID_ARGUMENT",
        &[
            "ErrorInfo: reason=INVALID_REQUEST domain=msstore-facade",
            "BadRequest: sku_id: is required",
            "BadRequest: content_id: must not be \".\" or \"..\"",
        ],
        1,
    ),
    (
        "StoreCollections/QueryCollections",
        "INVALID_ARGUMENT",
        &[
            "ErrorInfo: reason=KEY_TYPE_MISMATCH domain=msstore-facade",
            "BadRequest: user_key: ",
        ],
        1,
    ),
    // A Store 429 with Retry-After 30: RetryInfo 30 s, more than the examples wait.
    (
        "StoreEntitlements/GetOfflineLicense",
        "RESOURCE_EXHAUSTED",
        &[
            "ErrorInfo: reason=TOO_MANY_REQUESTS domain=127.0.0.1 metadata: http_status=429 ",
            "RetryInfo: retry_delay=30s",
        ],
        1,
    ),
    // A Store 503 every time: RetryInfo 1 s, so retried up to the examples' bound of 3.
    (
        "StoreEntitlements/GetOfflineLicense",
        "UNAVAILABLE",
        &[
            "ErrorInfo: reason=SERVICE_UNAVAILABLE domain=127.0.0.1 metadata: http_status=503 ",
            "RetryInfo: retry_delay=1s",
        ],
        3,
    ),
];

/// A call as an example printed it: `msstore.v1.Service/Method  (why)`, then
/// `  -> CODE (N attempts)...`, then one line per decoded detail.
#[derive(Debug, Default)]
struct PrintedCall {
    method: String,
    code: String,
    attempts: u32,
    details: Vec<String>,
}

/// The calls in an example's output, in order.
fn printed_calls(stdout: &str) -> Vec<PrintedCall> {
    let mut calls: Vec<PrintedCall> = Vec::new();
    for line in stdout.lines() {
        if line.starts_with("msstore.v1.") {
            let method = line.split_whitespace().next().unwrap_or_default();
            calls.push(PrintedCall {
                method: method.to_owned(),
                ..Default::default()
            });
        } else if let (Some(call), Some(outcome)) = (calls.last_mut(), line.strip_prefix("  -> ")) {
            let (code, rest) = outcome.split_once(" (").expect("`CODE (N attempts)`");
            call.code = code.to_owned();
            call.attempts = rest
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no attempt count in {line:?}"));
        } else if let Some(call) = calls.last_mut() {
            let detail = line.trim_start();
            if ["ErrorInfo: ", "RetryInfo: ", "BadRequest: "]
                .iter()
                .any(|kind| detail.starts_with(kind))
            {
                call.details.push(detail.to_owned());
            }
        }
    }
    calls
}

/// Checks how an example ended and what it printed: every RPC answered OK at least
/// once, and each provoked failure with its code, attempts and decoded details.
fn assert_example_output(example: &str, output: &Output, started: Instant) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let shown = format!("--- {example} stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(
        output.status.success(),
        "{example} failed ({}):\n{shown}",
        output.status
    );
    eprintln!(
        "{example} ran in {:.1} s\n{shown}",
        started.elapsed().as_secs_f64()
    );
    let calls = printed_calls(&stdout);
    assert!(
        stdout.contains(&format!("all {} calls answered as expected", calls.len())),
        "{shown}"
    );
    assert!(!stdout.contains("UNEXPECTED"), "{shown}");

    for (service, method) in msstore_facade::ops::METHODS {
        let name = format!("{service}/{method}");
        assert!(
            calls
                .iter()
                .any(|c| c.method == name && c.code == "OK" && c.attempts == 1),
            "{example} never called {name} successfully:\n{shown}"
        );
    }

    for (method, code, details, attempts) in PROVOKED {
        let found = calls.iter().find(|c| {
            c.method == format!("msstore.v1.{method}")
                && c.code == code
                && c.details.len() == details.len()
                && c.details
                    .iter()
                    .zip(details)
                    .all(|(d, want)| d.starts_with(want))
        });
        let found = found.unwrap_or_else(|| {
            panic!("{example}: no {method} answering {code} with {details:#?}:\n{shown}")
        });
        assert_eq!(found.attempts, attempts, "{example}: {found:?}");
    }
    assert_eq!(
        stdout
            .matches("RetryInfo says retry in 1s: waiting")
            .count(),
        2,
        "{shown}"
    );
}

/// Runs an example (`command`, without its environment yet) against a fresh `--sandbox` binary
/// on an ephemeral loopback port, as the sandbox user `user`; checks its output, then that the
/// binary still stops cleanly.
async fn run_against_sandbox(example: &'static str, user: &'static str, mut command: Command) {
    let mut facade = Process::start(&["--sandbox", "--grpc-addr", "127.0.0.1:0"], &[]);
    let addr = facade.wait_for("grpc_addr=");
    tokio::task::spawn_blocking(move || {
        command
            .env("MSSTORE_FACADE_ADDR", addr)
            .env("MSSTORE_COLLECTIONS_KEY", sandbox_key(&["--user", user]))
            .env(
                "MSSTORE_PURCHASE_KEY",
                sandbox_key(&["--type", "purchase", "--user", user]),
            );
        let started = Instant::now();
        let output = command
            .output()
            .unwrap_or_else(|e| panic!("start {example}: {e}"));
        assert_example_output(example, &output, started);
    })
    .await
    .unwrap();
    let (code, lines) = facade.terminate().await;
    assert_eq!(code, Some(0), "{lines:#?}");
}

fn example(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// `node_modules` of the Node example: `npm ci` of its committed `package.json` and
/// `package-lock.json`, in `<target dir>/node-examples`, reinstalled when either changes.
fn node_example_modules() -> PathBuf {
    let why = "The Node example caller runs with Node.js (20 or newer) and installs with npm.";
    require_tool("node", why);
    require_tool("npm", why);
    let files = ["package.json", "package-lock.json"];
    let read = |name: &str| {
        let path = example("examples/node").join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    };
    let stamp: String = files.iter().map(|name| read(name)).collect();
    let dir = target_dir().join("node-examples");
    install(&dir, &stamp, |staging| {
        for name in files {
            std::fs::write(staging.join(name), read(name)).expect("copy the npm manifest");
        }
        run(
            Command::new("npm")
                .args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"])
                .current_dir(staging)
                .env("npm_config_update_notifier", "false"),
            "npm ci (examples/node)",
        );
    });
    dir.join("node_modules")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_calls_every_rpc_and_decodes_every_detail_kind() {
    let python = tokio::task::spawn_blocking(python_client_venv)
        .await
        .unwrap();
    let mut command = Command::new(python);
    python_env(&mut command).arg(example("examples/python/store_caller.py"));
    run_against_sandbox("examples/python", "python-example", command).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_example_calls_every_rpc_and_decodes_every_detail_kind() {
    let node_modules = tokio::task::spawn_blocking(node_example_modules)
        .await
        .unwrap();
    let mut command = Command::new("node");
    command
        .arg(example("examples/node/store_caller.js"))
        .env("NODE_PATH", node_modules);
    run_against_sandbox("examples/node", "node-example", command).await;
}

#[test]
fn the_output_checker_reads_calls_codes_attempts_and_details() {
    let calls = printed_calls(
        "\nmsstore.v1.StoreKeys/RenewKey  (why)\n  -> OK (1 attempt)\n  key_type: \"X\"\n\
         \nmsstore.v1.StoreEntitlements/GetOfflineLicense  (why)\n  UNAVAILABLE, waiting\n\
         \x20 -> UNAVAILABLE (3 attempts): down\n  ErrorInfo: reason=R domain=d\n\
         \x20 RetryInfo: retry_delay=1s\n",
    );
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(
        (calls[0].code.as_str(), calls[0].attempts),
        ("OK", 1),
        "{calls:?}"
    );
    assert!(calls[0].details.is_empty(), "{calls:?}");
    assert_eq!(
        calls[1].method,
        "msstore.v1.StoreEntitlements/GetOfflineLicense"
    );
    assert_eq!(
        (calls[1].code.as_str(), calls[1].attempts),
        ("UNAVAILABLE", 3)
    );
    assert_eq!(
        calls[1].details,
        ["ErrorInfo: reason=R domain=d", "RetryInfo: retry_delay=1s"]
    );
}
