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
//!
//! The core targets run slower than the parsers by two orders of
//! magnitude, so long runs of them use every core ([`processes`]):
//! libFuzzer's `-jobs=N -workers=N` runs N fuzzing processes on one
//! corpus directory, each picking up what the others add (`-reload`), and
//! each writing its log to `fuzz/fuzz-K.log`; the figures printed are
//! their sums (executions, exec/s) and maxima (coverage, corpus).

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

/// Runs of at least this many seconds use every core for the core
/// targets ([`processes`]).
pub const LONG_RUN_SECONDS: u64 = 120;

/// `cargo xtask fuzz`.
pub fn run(target: Option<&str>, seconds: u64, jobs: Option<usize>) -> ExitCode {
    let targets: Vec<&str> = match target {
        Some(t) => vec![t],
        None => TARGETS.to_vec(),
    };
    match fuzz_with(&targets, seconds, jobs) {
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
    fuzz_with(targets, seconds, None)
}

/// How many libFuzzer processes fuzz `target` for `seconds`: `jobs` when
/// given; for a core target run for [`LONG_RUN_SECONDS`] or more, one per
/// core (the issue asks for executions per target on the machine, and a
/// core target alone keeps one core busy); else one.
pub fn processes(target: &str, seconds: u64, jobs: Option<usize>) -> usize {
    jobs.unwrap_or_else(|| {
        if CORE_TARGETS.contains(&target) && seconds >= LONG_RUN_SECONDS {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            1
        }
    })
}

fn fuzz_with(targets: &[&str], seconds: u64, jobs: Option<usize>) -> Result<(), String> {
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
        run_target(&dir, t, seconds, processes(t, seconds, jobs))?;
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

/// Runs one target as `jobs` processes; prints libFuzzer's figures.
fn run_target(dir: &Path, target: &str, seconds: u64, jobs: usize) -> Result<(), String> {
    let work = workspace_root().join("target/fuzz-corpus").join(target);
    let artifacts = dir.join("artifacts").join(target);
    for d in [&work, &artifacts] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let logs: Vec<_> = (0..jobs)
        .map(|k| dir.join(format!("fuzz-{k}.log")))
        .collect();
    if jobs > 1 {
        for l in &logs {
            let _ = std::fs::remove_file(l);
        }
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
    if jobs > 1 {
        cmd.arg(format!("-jobs={jobs}"))
            .arg(format!("-workers={jobs}"));
    }
    println!(
        "==> fuzz {target} ({seconds} s, {jobs} process{}): {}",
        if jobs > 1 { "es" } else { "" },
        process::describe(&cmd)
    );
    let started = std::time::Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", process::describe(&cmd)))?;
    let mut stats = Stats::default();
    let mut failure = Vec::new();
    // Keep what explains a failure; the progress lines are noise.
    let keep = |line: String, failure: &mut Vec<String>| {
        if !line.starts_with('#') && !line.starts_with("INFO") {
            failure.push(line);
        }
    };
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            stats.read(&line);
            keep(line, &mut failure);
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for the fuzzer: {e}"))?;
    let elapsed = started.elapsed().as_secs_f64();
    if jobs > 1 {
        // Each process's figures are in its log.
        let mut each = Vec::new();
        for l in &logs {
            let text = std::fs::read_to_string(l).unwrap_or_default();
            let mut st = Stats::default();
            for line in text.lines() {
                st.read(line);
                keep(line.to_owned(), &mut failure);
            }
            each.push(st);
        }
        stats = Stats::sum(&each, elapsed);
    }
    println!(
        "    {target}: {} executions in {} s, {} exec/s, coverage {} edges, {} features, corpus {}{}",
        stats.execs,
        stats.seconds,
        stats.exec_per_sec,
        stats.cov,
        stats.ft,
        stats.corpus,
        if jobs > 1 {
            format!(" ({jobs} processes: executions summed, coverage the largest)")
        } else {
            String::new()
        }
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

    /// The processes' figures together: executions summed over the wall
    /// time `elapsed` (seconds), coverage and corpus the largest (they
    /// share one corpus).
    fn sum(each: &[Stats], elapsed: f64) -> Stats {
        let num = |v: &str| v.split('/').next().and_then(|n| n.parse::<u64>().ok());
        let max = |f: fn(&Stats) -> &String| {
            each.iter()
                .filter_map(|s| num(f(s)))
                .max()
                .map_or_else(String::new, |n| n.to_string())
        };
        let execs: u64 = each.iter().filter_map(|s| num(&s.execs)).sum();
        Stats {
            execs: execs.to_string(),
            exec_per_sec: format!("{:.0}", execs as f64 / elapsed.max(1.0)),
            seconds: format!("{elapsed:.0}"),
            cov: max(|s| &s.cov),
            ft: max(|s| &s.ft),
            corpus: max(|s| &s.corpus),
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
