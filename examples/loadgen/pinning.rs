//! Which core runs what: the facade alone on one core, everything else (this process, the
//! emulator) on the others, with `taskset` (util-linux). Without `taskset` or with a single
//! core nothing is pinned, and the report says why.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;

use super::children::run_to_success;
use super::Fallible;

/// The cores of the run.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Cores this process was allowed to use at start.
    pub allowed: Vec<usize>,
    /// The facade's core and the others' cores, when pinning is possible.
    pub pinned: Option<Pinned>,
    /// Why nothing is pinned.
    pub not_pinned_because: Option<String>,
}

/// A facade core and the cores of everything else.
#[derive(Debug, Clone)]
pub struct Pinned {
    taskset: PathBuf,
    /// The facade's core.
    pub facade: usize,
    /// The load generator's and the emulator's cores.
    pub others: Vec<usize>,
}

/// Who a child process is, for pinning.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    /// The facade under measurement: its own core.
    Facade,
    /// The emulator (or any helper): the load generator's cores.
    Helper,
}

impl Layout {
    /// Plans the layout from this process's allowed cores and the requested facade core.
    pub fn plan(requested_facade_core: Option<usize>) -> Fallible<Self> {
        let status = std::fs::read_to_string("/proc/self/status")?;
        let allowed = status
            .lines()
            .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
            .map(|list| parse_cpu_list(list.trim()))
            .transpose()?
            .unwrap_or_default();
        let unpinned = |reason: String| Layout {
            allowed: allowed.clone(),
            pinned: None,
            not_pinned_because: Some(reason),
        };
        if let Some(core) = requested_facade_core {
            if !allowed.contains(&core) {
                return Err(format!(
                    "--facade-core {core} is not among the allowed cores {allowed:?}"
                )
                .into());
            }
        }
        if allowed.len() < 2 {
            return Ok(unpinned(format!(
                "only {} core(s) allowed: the facade cannot have a core of its own",
                allowed.len()
            )));
        }
        let Some(taskset) = find_on_path("taskset") else {
            return Ok(unpinned("taskset (util-linux) is not on PATH".to_owned()));
        };
        let facade = requested_facade_core.unwrap_or(allowed[0]);
        let others = allowed.iter().copied().filter(|&c| c != facade).collect();
        Ok(Layout {
            allowed,
            pinned: Some(Pinned {
                taskset,
                facade,
                others,
            }),
            not_pinned_because: None,
        })
    }

    /// Moves every thread of this process to the other cores (before the runtime starts, so
    /// its threads inherit them).
    pub fn pin_self(&self) -> Fallible<()> {
        let Some(pinned) = &self.pinned else {
            return Ok(());
        };
        let mut taskset = Command::new(&pinned.taskset);
        taskset
            .args(["-a", "-p", "-c", &cpu_list(&pinned.others)])
            .arg(std::process::id().to_string());
        run_to_success(taskset, "taskset, pinning the load generator")
    }

    /// A command running `program` on the cores of `role` (`taskset` execs it, so the child's
    /// pid is the program's own).
    pub fn command(&self, role: Role, program: impl AsRef<OsStr>) -> Command {
        match &self.pinned {
            Some(pinned) => {
                let cores = match role {
                    Role::Facade => cpu_list(&[pinned.facade]),
                    Role::Helper => cpu_list(&pinned.others),
                };
                let mut command = Command::new(&pinned.taskset);
                command.arg("-c").arg(cores).arg(program);
                command
            }
            None => Command::new(program),
        }
    }

    /// How many threads the load generator's runtime gets: one per core of its own.
    pub fn loadgen_threads(&self) -> usize {
        match &self.pinned {
            Some(pinned) => pinned.others.len(),
            None => self.allowed.len().max(1),
        }
    }
}

/// The first `name` in a directory of PATH.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Parses a kernel CPU list such as `0-3,6`.
pub fn parse_cpu_list(list: &str) -> Fallible<Vec<usize>> {
    let mut cores = Vec::new();
    for part in list.split(',').filter(|part| !part.is_empty()) {
        match part.split_once('-') {
            Some((first, last)) => cores.extend(first.parse::<usize>()?..=last.parse::<usize>()?),
            None => cores.push(part.parse()?),
        }
    }
    Ok(cores)
}

fn cpu_list(cores: &[usize]) -> String {
    cores
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
