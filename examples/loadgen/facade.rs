//! The facade as a child process: started pinned on its core against the upstream, and timed
//! from exec to its first served call.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};

use super::children::{free_loopback_port, ChildProcess};
use super::pinning::{Layout, Role};
use super::target::{CallIds, Outcome, Target};
use super::upstream::Upstream;
use super::Fallible;

/// How to start the facade.
pub struct FacadeSpec<'a> {
    /// The binary.
    pub bin: &'a Path,
    /// RUST_LOG.
    pub log_filter: &'a str,
    /// Environment besides the upstream's and the addresses.
    pub extra_env: &'a [(String, String)],
    /// Where its log goes.
    pub work_dir: &'a Path,
}

/// A running facade.
pub struct Facade {
    /// The process.
    pub process: ChildProcess,
    /// Its gRPC address.
    pub grpc_addr: SocketAddr,
    /// Its admin address (`/metrics`).
    pub admin_addr: SocketAddr,
    /// A channel to it, connected by the first served call.
    pub channel: Channel,
    /// From just before exec to the first answer OK.
    pub exec_to_first_served_call: Duration,
}

/// Starts the facade (under `wrapper`, e.g. valgrind, when given) on its core and waits at
/// most `patience` for its first call answered OK. Retries with other ports when it exits
/// before serving (another process took a port between the check and the bind).
pub async fn start(
    spec: &FacadeSpec<'_>,
    layout: &Layout,
    upstream: &Upstream,
    wrapper: &[OsString],
    ids: &CallIds,
    patience: Duration,
) -> Fallible<Facade> {
    let mut last_error = None;
    for attempt in 1..=3 {
        let grpc_addr: SocketAddr = ([127, 0, 0, 1], free_loopback_port()?).into();
        let admin_addr: SocketAddr = ([127, 0, 0, 1], free_loopback_port()?).into();
        let (program, wrapper_args): (PathBuf, &[OsString]) = match wrapper.split_first() {
            Some((program, args)) => (program.into(), args),
            None => (spec.bin.to_owned(), &[]),
        };
        let mut command = layout.command(Role::Facade, &program);
        command.args(wrapper_args);
        if !wrapper.is_empty() {
            command.arg(spec.bin);
        }
        command.env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }
        command
            .envs(upstream.facade_env.iter().cloned())
            .envs(spec.extra_env.iter().cloned())
            .env("MSSTORE_GRPC_ADDR", grpc_addr.to_string())
            .env("MSSTORE_ADMIN_ADDR", admin_addr.to_string())
            .env("RUST_LOG", spec.log_filter);
        let log = spec.work_dir.join(format!("facade-{attempt}.log"));
        let exec = Instant::now();
        let mut process = ChildProcess::spawn("facade", command, log, Stdio::null())?;
        match first_served_call(&mut process, grpc_addr, ids, patience).await {
            Ok(channel) => {
                return Ok(Facade {
                    process,
                    grpc_addr,
                    admin_addr,
                    channel,
                    exec_to_first_served_call: exec.elapsed(),
                })
            }
            Err(FirstCall::Exited(error)) => last_error = Some(error),
            Err(FirstCall::Failed(error)) => return Err(error),
        }
    }
    Err(last_error.expect("three attempts failed"))
}

enum FirstCall {
    /// The process exited: worth another try on other ports.
    Exited(Box<dyn std::error::Error + Send + Sync>),
    /// It runs but does not serve.
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

/// Polls (every millisecond) until a call answers OK; returns the connected channel.
async fn first_served_call(
    process: &mut ChildProcess,
    addr: SocketAddr,
    ids: &CallIds,
    patience: Duration,
) -> Result<Channel, FirstCall> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .expect("a socket address is a valid URI")
        .connect_timeout(Duration::from_secs(1));
    let deadline = Instant::now() + patience;
    let mut last = String::from("no connection");
    let mut n = 0;
    while Instant::now() < deadline {
        process.check_alive().map_err(FirstCall::Exited)?;
        match endpoint.connect().await {
            Ok(channel) => {
                n += 1;
                match Target::facade(channel.clone()).call(ids, n).await {
                    Outcome::Grpc(tonic::Code::Ok) => return Ok(channel),
                    // Not ready yet (e.g. still fetching its token): try again.
                    Outcome::Grpc(tonic::Code::Unavailable) => last = "UNAVAILABLE".into(),
                    other => {
                        return Err(FirstCall::Failed(
                            format!("the facade's first call answered {}", other.label()).into(),
                        ))
                    }
                }
            }
            Err(error) => last = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Err(FirstCall::Failed(
        format!("the facade served no call within {patience:?} (last: {last})").into(),
    ))
}

impl Facade {
    /// Counters from the facade's `/metrics` that show the calls were not merged: coalesced
    /// calls, and Store for Business requests answered 200.
    pub async fn metrics(&self, http: &reqwest::Client) -> Fallible<serde_json::Value> {
        let text = http
            .get(format!("http://{}/metrics", self.admin_addr))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let sum = |name: &str, labels: &[&str]| -> u64 {
            text.lines()
                .filter(|line| line.starts_with(name) && labels.iter().all(|l| line.contains(l)))
                .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
                .sum::<f64>() as u64
        };
        Ok(serde_json::json!({
            "coalesced_calls": sum("msstore_coalesced_calls_total", &[]),
            "license_rpcs_ok": sum(
                "msstore_rpc_requests_total{",
                &["method=\"GetOfflineLicense\"", "code=\"OK\""],
            ),
            "business_store_requests_200": sum(
                "msstore_upstream_requests_total{",
                &["upstream=\"business_store\"", "status=\"200\""],
            ),
        }))
    }
}
