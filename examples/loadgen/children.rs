//! Child processes (the facade, the emulator) and what `/proc` says about a process.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::pinning::{Layout, Role};
use super::Fallible;

/// A child process whose stderr goes to a log file; killed on drop unless stopped first.
pub struct ChildProcess {
    name: &'static str,
    child: Child,
    log: PathBuf,
    reaped: Option<ExitStatus>,
}

impl ChildProcess {
    /// Starts `command` with its stderr in `log` and stdout as given.
    pub fn spawn(
        name: &'static str,
        mut command: Command,
        log: PathBuf,
        stdout: Stdio,
    ) -> Fallible<Self> {
        let child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .map_err(|error| format!("cannot start the {name}: {error}"))?;
        Ok(Self {
            name,
            child,
            log,
            reaped: None,
        })
    }

    /// The process id (the program's own: `taskset` and `valgrind` exec or stay in it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Takes the child's stdout pipe, when it was spawned with `Stdio::piped()`.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// An error naming the child and its exit, with the end of its log, when it has exited.
    pub fn check_alive(&mut self) -> Fallible<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => {
                self.reaped = Some(status);
                Err(format!(
                    "the {} exited ({status}); the end of its log {}:\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail()
                )
                .into())
            }
        }
    }

    /// SIGTERM, then waits `grace` for the exit; SIGKILL after that. Returns the exit status.
    pub fn stop(&mut self, grace: Duration) -> Fallible<ExitStatus> {
        if let Some(status) = self.reaped {
            return Ok(status);
        }
        // std has no SIGTERM; kill(1) sends it.
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                self.reaped = Some(status);
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.kill()?;
        let status = self.child.wait()?;
        self.reaped = Some(status);
        Err(format!(
            "the {} did not exit within {grace:?} of SIGTERM and was killed",
            self.name
        )
        .into())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.reaped.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The emulator as a child process, and the `export NAME=VALUE` settings it printed.
pub struct EmulatorProcess {
    /// The process.
    pub process: ChildProcess,
    /// What it printed for a facade: upstream URLs and sandbox credentials.
    pub exports: Vec<(String, String)>,
}

/// Starts `msstore-facade emulator` on a free loopback port, on the helpers' cores.
pub fn start_emulator(
    bin: &Path,
    layout: &Layout,
    log_filter: &str,
    work_dir: &Path,
) -> Fallible<EmulatorProcess> {
    let mut command = layout.command(Role::Helper, bin);
    command
        .args(["emulator", "--listen", "127.0.0.1:0"])
        .env_clear()
        .env("RUST_LOG", log_filter);
    let mut process = ChildProcess::spawn(
        "emulator",
        command,
        work_dir.join("emulator.log"),
        Stdio::piped(),
    )?;
    let stdout = process.take_stdout().expect("stdout is piped");
    let (lines, exports_rx) = mpsc::channel();
    // Reads stdout to its end so that the emulator never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut exports = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    // AZURE_CLIENT_SECRET is the last line the emulator prints.
    while !exports
        .iter()
        .any(|(name, _): &(String, String)| name == "AZURE_CLIENT_SECRET")
    {
        process.check_alive()?;
        let left = deadline.saturating_duration_since(Instant::now());
        let line = exports_rx
            .recv_timeout(left.min(Duration::from_millis(100)))
            .ok();
        if let Some((name, value)) = line
            .as_deref()
            .and_then(|line| line.strip_prefix("export "))
            .and_then(|pair| pair.split_once('='))
        {
            exports.push((name.to_owned(), value.to_owned()));
        }
        if left.is_zero() {
            return Err("the emulator did not print its settings within 30 s".into());
        }
    }
    Ok(EmulatorProcess { process, exports })
}

/// Runs `command` to its end; an error quoting its stderr unless it exits 0.
pub fn run_to_success(mut command: Command, what: &str) -> Fallible<()> {
    let output = command.output()?;
    if !output.status.success() {
        return Err(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )
        .into());
    }
    Ok(())
}

/// A loopback TCP port that was free a moment ago.
pub fn free_loopback_port() -> Fallible<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// CPU time (user + system) that process `pid` has used, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Fallible<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces: the
    // state is field 3, utime field 14, stime field 15.
    let rest = &stat[stat.rfind(')').ok_or("no ')' in /proc/PID/stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).ok_or("short /proc/PID/stat")?.parse()?;
    let stime: u64 = fields.get(12).ok_or("short /proc/PID/stat")?.parse()?;
    Ok(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100, Linux's value, when getconf is missing).
pub fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100)
}

/// A `/proc/<pid>/status` memory figure such as `VmRSS` or `VmHWM`, in KiB.
pub fn memory_kib(pid: u32, field: &str) -> Fallible<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let value = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .ok_or_else(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(value.trim().trim_end_matches("kB").trim().parse()?)
}
