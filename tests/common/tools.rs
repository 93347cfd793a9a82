//! Tools the tests install for themselves under `<target dir>`: each built in a staging dir
//! beside its final place and moved in whole once a marker (with the pins it was built from)
//! is written last, so a half-built tool is never used and racing test runs both end up with
//! a complete one.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Written last into a finished tool dir; its text is the stamp the tool was built from.
const MARKER: &str = ".msstore-facade-tool-ready";

/// `CARGO_TARGET_DIR` (relative to the package, as cargo reads it) or `<package>/target`.
pub fn target_dir() -> PathBuf {
    let package = Path::new(env!("CARGO_MANIFEST_DIR"));
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => package.join(dir),
        _ => package.join("target"),
    }
}

fn is_ready(dir: &Path, stamp: &str) -> bool {
    std::fs::read_to_string(dir.join(MARKER)).is_ok_and(|text| text == stamp)
}

/// Makes sure `final_dir` holds what `build` makes from `stamp` (the pins): reused when its
/// marker matches, else built in a staging dir and moved in.
pub fn install(final_dir: &Path, stamp: &str, build: impl FnOnce(&Path)) {
    /// Tests of one binary run in threads of one process: one builds, the others wait for it
    /// and reuse its tool (racing processes still each build in their own staging dir).
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    if is_ready(final_dir, stamp) {
        return;
    }
    let _one_at_a_time = INSTALLING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if is_ready(final_dir, stamp) {
        return;
    }
    let started = Instant::now();
    let parent = final_dir.parent().expect("a tool dir has a parent");
    std::fs::create_dir_all(parent).expect("create the tool dir's parent");
    let name = final_dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    remove_abandoned_builds(parent, &format!("{name}.building-"));
    let staging = parent.join(format!("{name}.building-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).expect("create the staging dir");
    build(&staging);
    std::fs::write(staging.join(MARKER), stamp).expect("write the tool marker");
    if final_dir.exists() && !is_ready(final_dir, stamp) {
        std::fs::remove_dir_all(final_dir).expect("remove the stale tool dir");
    }
    if std::fs::rename(&staging, final_dir).is_err() {
        // Another run moved its own finished copy in first.
        assert!(
            is_ready(final_dir, stamp),
            "could not move {} to {}",
            staging.display(),
            final_dir.display()
        );
        let _ = std::fs::remove_dir_all(&staging);
    }
    eprintln!(
        "installed {} in {:.1} s",
        final_dir.display(),
        started.elapsed().as_secs_f64()
    );
}

/// Removes staging dirs that runs killed mid-build left behind (untouched for an hour).
fn remove_abandoned_builds(parent: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let abandoned = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(3600));
        if abandoned && entry.file_name().to_string_lossy().starts_with(prefix) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A virtualenv at `dir` with the pinned `requirements` file (relative to the package)
/// installed from wheels only; returns its interpreter. `python_version` goes into the stamp,
/// so a new base interpreter rebuilds the venv.
pub fn pinned_venv(dir: &Path, requirements: &str, python_version: &str) -> PathBuf {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(requirements);
    let pins =
        std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
    let stamp = format!("python {python_version}\n{pins}");
    install(dir, &stamp, |staging| {
        // `python -m venv` into the staging dir, then moved: only `bin/python -m ...` is ever
        // run, which does not mind the move (the console scripts' shebangs would).
        let _ = std::fs::remove_dir_all(staging);
        run(
            Command::new("python3").args(["-m", "venv"]).arg(staging),
            "python3 -m venv (Debian: apt-get install python3-venv)",
        );
        run(
            Command::new(staging.join("bin").join("python"))
                .args(["-m", "pip", "install", "--no-input", "--require-virtualenv"])
                .args(["--disable-pip-version-check", "--only-binary=:all:", "-r"])
                .arg(&file),
            &format!("pip install -r {requirements}"),
        );
    });
    dir.join("bin").join("python")
}

/// The interpreter of the Python callers' virtualenv (`<target dir>/python-venv`), built from
/// the pinned `examples/python/requirements.txt`: the example caller and `tests/python/client.py`
/// share it.
pub fn python_client_venv() -> PathBuf {
    pinned_venv(
        &target_dir().join("python-venv"),
        "examples/python/requirements.txt",
        &base_python_version(),
    )
}

/// `python3 --version`, failing clearly when there is none or it is too old for grpcio.
fn base_python_version() -> String {
    let output = Command::new("python3")
        .arg("--version")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "the polyglot tests need python3 (CPython 3.10 or newer with the venv module) \
                 on PATH: running `python3 --version` failed: {e}"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let version = text.trim().trim_start_matches("Python ").to_owned();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    assert!(
        output.status.success() && (major, minor) >= (3, 10),
        "the polyglot tests need python3 >= 3.10 (the pinned grpcio wheels need it); \
         `python3 --version` said {text:?}"
    );
    version
}

/// The environment of every Python process: nothing from the caller's Python setup leaks in.
pub fn python_env(command: &mut Command) -> &mut Command {
    command
        .env_remove("PYTHONPATH")
        .env_remove("PYTHONHOME")
        .env_remove("PIP_USER")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
}

/// Runs `command` (with the clean Python environment) to completion, panicking with its
/// output when it fails.
pub fn run(command: &mut Command, what: &str) -> Output {
    let output = python_env(command)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: could not start: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Panics with `why` unless `tool --version` runs.
pub fn require_tool(tool: &str, why: &str) {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "`{tool}` is missing or broken. {why}");
}

/// `npm pack package` into `dir` (no install scripts run), its npm integrity checked against
/// `integrity`; the tarball's path.
pub fn npm_pack(package: &str, integrity: &str, dir: &Path) -> PathBuf {
    require_tool(
        "npm",
        &format!("{package} is installed from npm (`npm pack`): install Node.js with npm"),
    );
    let pack = run(
        Command::new("npm")
            .args(["pack", package, "--json", "--ignore-scripts"])
            .arg("--pack-destination")
            .arg(dir)
            .current_dir(dir)
            .env("npm_config_update_notifier", "false")
            .env("npm_config_fund", "false")
            .env("npm_config_audit", "false"),
        &format!("npm pack {package}"),
    );
    let packed: serde_json::Value = serde_json::from_slice(&pack.stdout)
        .unwrap_or_else(|e| panic!("npm pack --json printed no JSON ({e})"));
    let packed = &packed[0];
    assert_eq!(
        packed["integrity"].as_str(),
        Some(integrity),
        "{package} does not have the pinned integrity: {packed}"
    );
    dir.join(packed["filename"].as_str().expect("npm pack filename"))
}
