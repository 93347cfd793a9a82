//! The binary as a child process.

use std::time::Duration;

use tonic::transport::Channel;

/// The binary as a child process with an empty environment (so no `AZURE_*` or `MSSTORE_*`
/// variable of the machine leaks in) plus `env`. Its stdout and stderr lines arrive on one
/// channel as they are written; it is killed on drop if a test fails half-way.
pub struct Process {
    child: Option<std::process::Child>,
    output: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Process {
    /// Starts `msstore-facade args...`.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        use std::process::Stdio;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_msstore-facade"))
            .args(args)
            .env_clear()
            .env("RUST_LOG", "info")
            // Many binaries run at once: none may take the default admin port.
            .env("MSSTORE_ADMIN_ADDR", "127.0.0.1:0")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let (tx, output) = std::sync::mpsc::channel();
        let stdout = child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
        let stderr = child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
        for stream in [stdout, stderr].into_iter().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stream)
                    .lines()
                    .map_while(Result::ok)
                {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Self {
            child: Some(child),
            output,
            seen: Vec::new(),
        }
    }

    /// Waits for the first line containing `marker` and returns the word that follows it.
    pub fn wait_for(&mut self, marker: &str) -> String {
        let found = |line: &String| {
            line.split_once(marker).map(|(_, rest)| {
                rest.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
        };
        if let Some(value) = self.seen.iter().find_map(found) {
            return value;
        }
        loop {
            let line = self
                .output
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("no line with {marker:?}; got {:#?}", self.seen));
            let value = found(&line);
            self.seen.push(line);
            if let Some(value) = value {
                return value;
            }
        }
    }

    /// Sends SIGTERM and waits for the exit; returns the exit code and every output line.
    /// The wait runs off the test's runtime, which stays free to close client connections.
    pub async fn terminate(mut self) -> (Option<i32>, Vec<String>) {
        let mut child = self.child.take().expect("still running");
        let signalled = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(signalled.success());
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("the wait does not panic")
            .expect("the child is waited for");
        // Both pipes close with the process, so this ends.
        self.seen.extend(self.output.try_iter());
        self.seen.extend(self.output.iter());
        (status.code(), std::mem::take(&mut self.seen))
    }
}

/// Runs `msstore-facade sandbox-key args...` and returns the key it prints.
pub fn sandbox_key(args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_msstore-facade"))
        .arg("sandbox-key")
        .args(args)
        .env_clear()
        .output()
        .expect("the binary runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// A channel to the facade at `addr` (as the binary logs it).
pub async fn channel_to(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("the facade accepts connections")
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
