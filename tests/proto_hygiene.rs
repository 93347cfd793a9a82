//! Proto hygiene: `buf lint` (the STANDARD rules; the names the contract fixes are ignored
//! where they are declared, `// buf:lint:ignore RULE`) and `buf breaking` (the FILE rules)
//! of `proto/` against the protos of the previous commit, with `buf.yaml` at the root.
//! Two more runs prove that each check can fail: a badly named message, and a deleted field.
//!
//! buf is installed on first use under `<target dir>/tools`: the official static build, out
//! of its npm package (`npm pack`, pinned version and npm integrity checked). Needs `npm`,
//! `tar` and `git` (a clone with the previous commit; a shallow one is deepened by one).
//! Without them the tests fail, they never skip. Only the npm registry is contacted, and only
//! while installing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::tools::{install, npm_pack, require_tool, run, target_dir};

/// buf's version, as `buf --version` prints it.
const BUF_VERSION: &str = "1.75.0";

/// The npm package of buf's static build for this machine, and npm's integrity of its tarball.
fn buf_package() -> (&'static str, &'static str) {
    match std::env::consts::ARCH {
        "x86_64" => (
            "@bufbuild/buf-linux-x64@1.75.0",
            "sha512-YGGJAx0lpMCE7aMWjNOJcfoEaG/e+iYHnTC4SZ0P5eS4IffMryA9Z4/bb1m1wNXAEJ8ATFMEZOAk/5x9VE47ig==",
        ),
        "aarch64" => (
            "@bufbuild/buf-linux-aarch64@1.75.0",
            "sha512-eX+XyokzJDqsNIFo8b1O3DBvbnksOozPJX4QVsNn61JqSUtWspyTNeYqwg8lRDancML+bDqZEDFPABjAsVCQGQ==",
        ),
        other => panic!("no pinned buf build for {other} (x86_64 and aarch64 Linux are pinned)"),
    }
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn buf() -> &'static Path {
    static BUF: OnceLock<PathBuf> = OnceLock::new();
    BUF.get_or_init(|| {
        let (package, integrity) = buf_package();
        let dir = target_dir()
            .join("tools")
            .join(format!("buf-{BUF_VERSION}"));
        install(&dir, &format!("{package}\n{integrity}\n"), |staging| {
            require_tool("tar", "buf is unpacked from its npm tarball with tar");
            let tarball = npm_pack(package, integrity, staging);
            run(
                Command::new("tar")
                    .arg("-xzf")
                    .arg(&tarball)
                    .arg("-C")
                    .arg(staging)
                    .args(["--strip-components=2", "package/bin/buf"]),
                "unpack bin/buf from the npm tarball",
            );
            std::fs::remove_file(&tarball).expect("remove the npm tarball");
            let version = run(
                Command::new(staging.join("buf")).arg("--version"),
                "buf --version",
            );
            let version = String::from_utf8_lossy(&version.stdout);
            assert_eq!(version.trim(), BUF_VERSION, "buf --version");
        });
        dir.join("buf")
    })
}

/// Runs buf with `args` in `dir`; its output, whether it succeeded or not.
fn buf_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(buf())
        .args(args)
        .current_dir(dir)
        // buf's cache stays under target/, out of the user's home.
        .env(
            "BUF_CACHE_DIR",
            target_dir().join("tools").join("buf-cache"),
        )
        .output()
        .expect("buf runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A scratch workspace under the target dir: `buf.yaml` and `proto/` as in the repository
/// (with `proto` from `tree`, a directory to copy), for the runs that must fail.
fn workspace(name: &str, tree: &Path) -> PathBuf {
    let dir = target_dir()
        .join("proto-hygiene")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the scratch workspace");
    std::fs::copy(repo().join("buf.yaml"), dir.join("buf.yaml")).expect("copy buf.yaml");
    copy_dir(tree, &dir.join("proto"));
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create a directory");
    for entry in std::fs::read_dir(from).expect("read a directory").flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a file");
        }
    }
}

fn git(args: &[&str]) -> Output {
    require_tool(
        "git",
        "the breaking-change check reads the previous commit with git",
    );
    Command::new("git")
        .args(args)
        .current_dir(repo())
        .output()
        .expect("git runs")
}

/// The protos of the commit before `HEAD`, as a scratch workspace (`None`: that commit had no
/// `proto/`). A shallow clone is deepened by one commit first.
fn previous_protos() -> Option<PathBuf> {
    let has_previous = || {
        git(&["rev-parse", "--verify", "--quiet", "HEAD~1^{commit}"])
            .status
            .success()
    };
    if !has_previous() {
        let shallow = git(&["rev-parse", "--is-shallow-repository"]);
        assert_eq!(
            String::from_utf8_lossy(&shallow.stdout).trim(),
            "true",
            "HEAD has no parent commit: nothing to check breaking changes against"
        );
        let deepen = git(&["fetch", "--quiet", "--deepen=1"]);
        assert!(
            deepen.status.success() && has_previous(),
            "a shallow clone without the previous commit, which could not be fetched: {}",
            text(&deepen)
        );
    }
    let listed = git(&["ls-tree", "--name-only", "HEAD~1", "proto"]);
    if String::from_utf8_lossy(&listed.stdout).trim().is_empty() {
        return None;
    }
    let dir = target_dir()
        .join("proto-hygiene")
        .join(format!("previous-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the previous commit's workspace");
    let archive = git(&["archive", "--format=tar", "HEAD~1", "proto"]);
    assert!(archive.status.success(), "git archive: {}", text(&archive));
    let mut tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(&dir)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("tar runs");
    std::io::Write::write_all(tar.stdin.as_mut().expect("tar's stdin"), &archive.stdout)
        .expect("feed tar");
    drop(tar.stdin.take());
    assert!(tar.wait().expect("tar finishes").success(), "tar -x");
    // The previous commit's layout, read with today's module configuration.
    std::fs::copy(repo().join("buf.yaml"), dir.join("buf.yaml")).expect("copy buf.yaml");
    Some(dir)
}

#[test]
fn the_protos_pass_buf_lint_with_only_the_contracts_names_excepted() {
    let lint = buf_in(repo(), &["lint"]);
    assert!(lint.status.success(), "buf lint:\n{}", text(&lint));
    // Each exception is the contract's: a service name or a response message it fixes.
    let mut ignores = Vec::new();
    for entry in std::fs::read_dir(repo().join("proto/msstore/v1"))
        .unwrap()
        .flatten()
    {
        let source = std::fs::read_to_string(entry.path()).unwrap();
        ignores.extend(
            source
                .lines()
                .filter_map(|line| line.trim().strip_prefix("// buf:lint:ignore "))
                .map(str::to_owned),
        );
    }
    ignores.sort();
    ignores.dedup();
    assert_eq!(ignores, ["RPC_RESPONSE_STANDARD_NAME", "SERVICE_SUFFIX"]);
}

#[test]
fn buf_lint_fails_on_a_badly_named_message() {
    let dir = workspace("lint", &repo().join("proto"));
    std::fs::write(
        dir.join("proto/msstore/v1/bad.proto"),
        "syntax = \"proto3\";\npackage msstore.v1;\nmessage bad_name {}\n",
    )
    .unwrap();
    let lint = buf_in(&dir, &["lint"]);
    assert!(!lint.status.success(), "{}", text(&lint));
    assert!(text(&lint).contains("bad_name"), "{}", text(&lint));
}

#[test]
fn the_protos_break_nothing_of_the_previous_commit() {
    let Some(previous) = previous_protos() else {
        return;
    };
    let against = previous.to_string_lossy().into_owned();
    let breaking = buf_in(repo(), &["breaking", "--against", &against]);
    assert!(
        breaking.status.success(),
        "buf breaking:\n{}",
        text(&breaking)
    );
}

#[test]
fn buf_breaking_fails_on_a_deleted_field() {
    let dir = workspace("breaking", &repo().join("proto"));
    let file = dir.join("proto/msstore/v1/store_refunds.proto");
    let source = std::fs::read_to_string(&file).unwrap();
    let without = source.replace("  string ack_id = 1;\n", "");
    assert_ne!(source, without, "the field to delete is there");
    std::fs::write(&file, without).unwrap();
    let against = repo().to_string_lossy().into_owned();
    let breaking = buf_in(&dir, &["breaking", "--against", &against]);
    assert!(!breaking.status.success(), "{}", text(&breaking));
    assert!(text(&breaking).contains("ack_id"), "{}", text(&breaking));
}
