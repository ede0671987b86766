//! `cargo xtask mutants [ARGS...]`: mutation testing of the core with
//! cargo-mutants (installed if missing). Mutates `hyp`, `pagetables` and
//! `host-interface`; judges every mutant with `cargo test --workspace
//! --release` (`.cargo/mutants.toml`). One job at a time: a full run takes
//! hours on the development machine, so ARGS (passed to cargo-mutants)
//! usually narrow it, e.g. `--file hyp/src/vcpu.rs` or `--shard 0/8`.
//! Results land in `mutants.out/`; the score is caught / (caught + missed).

use std::process::{Command, ExitCode, Stdio};

use crate::{process, workspace_root};

/// The crates whose mutants are generated.
pub const CRATES: [&str; 3] = ["hyp", "pagetables", "host-interface"];

/// `cargo xtask mutants`.
pub fn run(extra: &[String]) -> ExitCode {
    if let Err(e) = ensure_cargo_mutants() {
        eprintln!("xtask: {e}");
        return ExitCode::FAILURE;
    }
    let mut cmd = process::cargo();
    cmd.arg("mutants").current_dir(workspace_root());
    for c in CRATES {
        cmd.args(["--package", c]);
    }
    // The baseline runs only the mutated packages' own tests (seconds),
    // and cargo-mutants sets the test timeout from it; each mutant runs the
    // whole workspace's tests (a minute or more), which would then time
    // out rather than be judged.
    cmd.args(["--jobs", "1", "--minimum-test-timeout", "600"])
        .args(extra);
    println!("==> mutants: {}", process::describe(&cmd));
    // cargo-mutants exits 2 when mutants were missed, 3 on timeouts: the
    // summary it prints says which.
    process::exit_code(process::status(&mut cmd))
}

fn ensure_cargo_mutants() -> Result<(), String> {
    let works = |cmd: &mut Command| {
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works(process::cargo().args(["mutants", "--version"])) {
        return Ok(());
    }
    println!(
        "xtask: cargo-mutants is missing; installing it: cargo install --locked cargo-mutants"
    );
    let mut install = process::cargo();
    install.args(["install", "--locked", "cargo-mutants"]);
    if process::succeeded(&mut install) && works(process::cargo().args(["mutants", "--version"])) {
        Ok(())
    } else {
        Err(
            "cargo-mutants could not be installed. Install it, then try again:\n\n    \
             cargo install --locked cargo-mutants\n"
                .into(),
        )
    }
}
