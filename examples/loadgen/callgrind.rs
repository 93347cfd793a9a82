//! Instructions per call: the facade runs under valgrind's callgrind; after the warm-up calls
//! its counters are zeroed (`callgrind_control -z`), then the counted calls run one at a time,
//! and a dump (`callgrind_control -d`) holds the user-space instructions (Ir) of exactly those
//! calls. So Ir / calls = (instructions after warm-up + counted calls - after warm-up) / calls.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::children::run_to_success;
use super::facade::{self, FacadeSpec};
use super::load::{closed_loop, Phase};
use super::pinning::{find_on_path, Layout};
use super::target::{CallIds, Target};
use super::upstream::Upstream;
use super::Fallible;

/// valgrind and callgrind_control, or why they cannot be used.
pub fn tools() -> Result<(PathBuf, PathBuf), String> {
    let valgrind = find_on_path("valgrind");
    let control = find_on_path("callgrind_control");
    match (valgrind, control) {
        (Some(valgrind), Some(control)) => Ok((valgrind, control)),
        _ => Err("valgrind (with callgrind_control) is not on PATH; \
                  benches/instructions.sh installs it"
            .to_owned()),
    }
}

/// What the callgrind run measured.
pub struct Counted {
    /// Instructions of the counted calls.
    pub instructions: u64,
    /// The warm-up calls (before the zeroing).
    pub warmup: Phase,
    /// The counted calls.
    pub counted: Phase,
    /// Exec to the first served call, under valgrind.
    pub startup: Duration,
}

impl Counted {
    /// Instructions per counted call.
    pub fn per_call(&self) -> f64 {
        self.instructions as f64 / self.counted.recorder.calls().max(1) as f64
    }
}

/// Runs the facade under callgrind against `upstream`: `warmup` calls, zero, `calls` calls,
/// dump. One call at a time, each with its own content id.
pub async fn count(
    spec: &FacadeSpec<'_>,
    layout: &Layout,
    upstream: &Upstream,
    ids: &CallIds,
    (warmup, calls): (u64, u64),
) -> Fallible<Counted> {
    let (valgrind, control) = tools()?;
    let out = spec.work_dir.join("callgrind.out");
    let dump = spec.work_dir.join("callgrind.out.1");
    for stale in [&out, &dump] {
        let _ = std::fs::remove_file(stale);
    }
    let mut out_flag = OsString::from("--callgrind-out-file=");
    out_flag.push(&out);
    let wrapper = [
        valgrind.into_os_string(),
        "--tool=callgrind".into(),
        out_flag,
    ];
    let patience = Duration::from_secs(300);
    let mut facade = facade::start(
        spec,
        layout,
        upstream,
        &wrapper,
        &ids.phase("cg-first"),
        patience,
    )
    .await?;
    let target = Target::facade(facade.channel.clone());
    let pid = facade.process.pid();
    let warmup = closed_loop(&target, &ids.phase("cg-warm"), warmup, 1).await;
    callgrind_control(&control, "-z", pid)?;
    let counted = closed_loop(&target, &ids.phase("cg"), calls, 1).await;
    callgrind_control(&control, "-d", pid)?;
    let instructions = read_dump(&dump, Duration::from_secs(120))?;
    facade.process.stop(Duration::from_secs(120))?;
    Ok(Counted {
        instructions,
        warmup,
        counted,
        startup: facade.exec_to_first_served_call,
    })
}

fn callgrind_control(control: &Path, command: &str, pid: u32) -> Fallible<()> {
    let mut control = Command::new(control);
    control.arg(command).arg(pid.to_string());
    run_to_success(control, &format!("callgrind_control {command} {pid}"))
}

/// The total Ir of a callgrind dump (its `summary:` line, else `totals:`), once written.
fn read_dump(path: &Path, patience: Duration) -> Fallible<u64> {
    let deadline = Instant::now() + patience;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            let line = |key: &str| {
                text.lines()
                    .find_map(|line| line.strip_prefix(key))
                    .and_then(|value| value.split_whitespace().next()?.parse::<u64>().ok())
            };
            if let Some(ir) = line("summary:").or_else(|| line("totals:")) {
                return Ok(ir);
            }
        }
        if Instant::now() > deadline {
            return Err(format!("no callgrind dump with a total in {}", path.display()).into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
