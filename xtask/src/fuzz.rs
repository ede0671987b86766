//! `cargo xtask fuzz [TARGET] [--time SECONDS]`: coverage-guided fuzzing
//! of the core with cargo-fuzz (libFuzzer), on stable Rust (`-s none`: no
//! sanitizer, which is what needs nightly; the code under test is safe
//! Rust, and libFuzzer's coverage instrumentation works on stable).
//!
//! The targets are `sim::fuzzing` (one function each); `fuzz/` wraps them
//! for cargo-fuzz. Each run starts from the seed corpus in
//! `fuzz/corpus/TARGET` (kept read-only: what libFuzzer finds goes to
//! `target/fuzz-corpus/TARGET`) and stops at the first crash or oracle
//! failure, which libFuzzer saves under `fuzz/artifacts/TARGET/`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};

use crate::{process, workspace_root};

/// The targets, in the order `cargo xtask fuzz` runs them (the names of
/// `sim::fuzzing::TARGETS` and of the bins in `fuzz/Cargo.toml`).
pub const TARGETS: [&str; 5] = [
    "host_calls",
    "guest_exits",
    "decode",
    "device_tree",
    "manifest",
];

/// Seconds per target when `--time` is not given.
pub const DEFAULT_SECONDS: u64 = 60;

/// Seconds per target in `cargo xtask test`.
pub const SMOKE_SECONDS: u64 = 30;

/// `cargo xtask fuzz`.
pub fn run(target: Option<&str>, seconds: u64) -> ExitCode {
    let targets: Vec<&str> = match target {
        Some(t) => vec![t],
        None => TARGETS.to_vec(),
    };
    match fuzz(&targets, seconds) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Builds the targets and runs each for `seconds`; `Err` names the first
/// that failed.
pub fn fuzz(targets: &[&str], seconds: u64) -> Result<(), String> {
    if let Some(t) = targets.iter().find(|t| !TARGETS.contains(t)) {
        return Err(format!(
            "unknown fuzz target `{t}` (targets: {})",
            TARGETS.join(", ")
        ));
    }
    ensure_cargo_fuzz()?;
    let dir = workspace_root().join("fuzz");
    for t in targets {
        let mut build = cargo_fuzz(&dir);
        build.arg("build").args(build_flags(t)).arg(t);
        println!("==> fuzz build: {}", process::describe(&build));
        if !process::succeeded(&mut build) {
            return Err(format!("building the fuzz target `{t}` failed"));
        }
    }
    for t in targets {
        run_target(&dir, t, seconds)?;
    }
    Ok(())
}

/// The targets that drive the core over the simulator. Their inputs are
/// structured (`sim::fuzzing::host_calls::Picker` turns bytes into live
/// handles, real pfns and gfns), and most of their time goes to the
/// oracle's table walks: comparison tracing there (libFuzzer's CMP
/// feedback) cost 60 % of each execution and guides nothing, so they are
/// built without it, in a target directory of their own.
pub const CORE_TARGETS: [&str; 2] = ["host_calls", "guest_exits"];

/// `cargo fuzz build`/`run` flags for `target`: no sanitizer (stable),
/// release with debug assertions; see [`CORE_TARGETS`].
fn build_flags(target: &str) -> Vec<&'static str> {
    let mut f = vec!["-s", "none", "-O", "-a"];
    if CORE_TARGETS.contains(&target) {
        f.extend(["--no-trace-compares", "--target-dir", "target-core"]);
    }
    f
}

fn cargo_fuzz(dir: &Path) -> Command {
    let mut cmd = process::cargo();
    cmd.arg("fuzz").current_dir(dir);
    cmd
}

/// Runs one target; prints libFuzzer's figures.
fn run_target(dir: &Path, target: &str, seconds: u64) -> Result<(), String> {
    let work = workspace_root().join("target/fuzz-corpus").join(target);
    let artifacts = dir.join("artifacts").join(target);
    for d in [&work, &artifacts] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let mut cmd = cargo_fuzz(dir);
    cmd.arg("run")
        .args(build_flags(target))
        .arg(target)
        .arg(&work)
        .arg(dir.join("corpus").join(target))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg("-timeout=20")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .stderr(Stdio::piped());
    println!(
        "==> fuzz {target} ({seconds} s): {}",
        process::describe(&cmd)
    );
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", process::describe(&cmd)))?;
    let mut stats = Stats::default();
    let mut failure = Vec::new();
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            stats.read(&line);
            // Keep what explains a failure; the progress lines are noise.
            if !line.starts_with('#') && !line.starts_with("INFO") {
                failure.push(line);
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for the fuzzer: {e}"))?;
    println!(
        "    {target}: {} executions in {} s, {} exec/s, coverage {} edges, {} features, corpus {}",
        stats.execs, stats.seconds, stats.exec_per_sec, stats.cov, stats.ft, stats.corpus
    );
    if status.success() {
        Ok(())
    } else {
        for line in failure.iter().rev().take(40).rev() {
            eprintln!("    {line}");
        }
        Err(format!(
            "fuzz target `{target}` failed ({status}); the input is in {}: \
             fix the bug, then keep the input as a regression test in fuzz/regressions/{target}/",
            artifacts.display()
        ))
    }
}

/// libFuzzer's final figures.
#[derive(Default)]
struct Stats {
    execs: String,
    exec_per_sec: String,
    seconds: String,
    cov: String,
    ft: String,
    corpus: String,
}

impl Stats {
    fn read(&mut self, line: &str) {
        let field = |key: &str| {
            line.split_whitespace()
                .skip_while(|w| *w != key)
                .nth(1)
                .map(str::to_owned)
        };
        if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
            self.execs = v.trim().into();
        } else if let Some(v) = line.strip_prefix("stat::average_exec_per_sec:") {
            self.exec_per_sec = v.trim().into();
        } else if line.starts_with("Done ") {
            // "Done N runs in S second(s)"
            self.seconds = line.split_whitespace().nth(4).unwrap_or_default().into();
        } else if line.starts_with('#') && line.contains(" cov: ") {
            self.cov = field("cov:").unwrap_or_default();
            self.ft = field("ft:").unwrap_or_default();
            self.corpus = field("corp:").unwrap_or_default();
        }
    }
}

/// Makes sure `cargo fuzz` runs; installs cargo-fuzz with `cargo install
/// --locked cargo-fuzz` when it is missing.
pub fn ensure_cargo_fuzz() -> Result<(), String> {
    let works = |cmd: &mut Command| {
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works(process::cargo().args(["fuzz", "--version"])) {
        return Ok(());
    }
    println!("xtask: cargo-fuzz is missing; installing it: cargo install --locked cargo-fuzz");
    let mut install = process::cargo();
    install.args(["install", "--locked", "cargo-fuzz"]);
    if process::succeeded(&mut install) && works(process::cargo().args(["fuzz", "--version"])) {
        Ok(())
    } else {
        Err(
            "cargo-fuzz could not be installed. Install it, then try again:\n\n    \
             cargo install --locked cargo-fuzz\n\n\
             (it needs a C++ compiler for libFuzzer: apt-get install g++)"
                .into(),
        )
    }
}
