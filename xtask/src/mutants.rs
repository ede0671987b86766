//! `cargo xtask mutants [CRATE] [ARGS...]`: mutation testing of the core
//! with cargo-mutants (installed if missing). Mutates `hyp`, `pagetables`
//! and `host-interface` (or only CRATE), one crate per cargo-mutants run.
//! Each mutant is judged by the tests of every workspace package that
//! depends on its crate, and of the crate itself (`cargo tree -i`): no
//! other test can tell a mutant apart. The build uses the `mutants`
//! profile (release code, no debug info, incremental), so a mutant
//! rebuilds in seconds. One job at a time; ARGS (passed to cargo-mutants)
//! narrow a run, e.g. `--file hyp/src/vcpu.rs` or `--shard 0/8`. Results
//! land in `target/mutants/CRATE/mutants.out/`; the score is caught /
//! (caught + missed).

use std::process::{Command, ExitCode, Stdio};

use crate::{process, workspace_root};

/// The crates whose mutants are generated.
pub const CRATES: [&str; 3] = ["hyp", "pagetables", "host-interface"];

/// `cargo xtask mutants`.
pub fn run(args: &[String]) -> ExitCode {
    if let Err(e) = ensure_cargo_mutants() {
        eprintln!("xtask: {e}");
        return ExitCode::FAILURE;
    }
    let (crates, extra): (Vec<&str>, &[String]) = match args.first() {
        Some(c) if CRATES.contains(&c.as_str()) => (vec![c.as_str()], &args[1..]),
        _ => (CRATES.to_vec(), args),
    };
    let mut worst = ExitCode::SUCCESS;
    for c in crates {
        let judges = match dependents(c) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("xtask: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut cmd = process::cargo();
        cmd.arg("mutants").current_dir(workspace_root()).args([
            "--package",
            c,
            "--profile",
            "mutants",
        ]);
        // One job at a time unless ARGS say otherwise (`--jobs 2` builds
        // two copies of the tree side by side).
        if !extra
            .iter()
            .any(|a| a == "--jobs" || a == "-j" || a.starts_with("--jobs="))
        {
            cmd.args(["--jobs", "1"]);
        }
        cmd
            // The baseline runs only the mutated crate's own tests, and
            // cargo-mutants sets the timeout from it; each mutant also runs
            // the dependents' tests, which must not time out instead of
            // being judged.
            .args(["--minimum-test-timeout", "300"])
            .arg("--output")
            .arg(workspace_root().join("target").join("mutants").join(c));
        for j in &judges {
            cmd.args(["--test-package", j]);
        }
        cmd.args(extra);
        println!("==> mutants of {c}: {}", process::describe(&cmd));
        // cargo-mutants exits 2 when mutants were missed, 3 on timeouts: the
        // summary it prints says which.
        let code = process::exit_code(process::status(&mut cmd));
        if code != ExitCode::SUCCESS {
            worst = code;
        }
    }
    worst
}

/// The workspace packages whose tests can observe `krate`: itself and
/// every member that depends on it, directly or not, as a normal or dev
/// dependency.
fn dependents(krate: &str) -> Result<Vec<String>, String> {
    let out = process::cargo()
        .args(["tree", "--workspace", "--invert", krate])
        .args(["--edges", "normal,dev", "--prefix", "none"])
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cargo tree: {e}"))?;
    if !out.status.success() {
        return Err(format!("cargo tree --invert {krate} failed"));
    }
    let names = workspace_members(&String::from_utf8_lossy(&out.stdout), workspace_root());
    if names.iter().any(|n| n == krate) {
        Ok(names)
    } else {
        Err(format!(
            "cargo tree --invert {krate}: {krate} is not a workspace member"
        ))
    }
}

/// The package names of `cargo tree --prefix none` lines
/// (`name vX.Y.Z (/path)`, maybe with ` (*)`) whose path is inside `root`,
/// each once, in order.
fn workspace_members(tree: &str, root: &std::path::Path) -> Vec<String> {
    let root = root.display().to_string();
    let mut names: Vec<String> = Vec::new();
    for line in tree.lines() {
        let mut words = line.split_whitespace();
        let (Some(name), Some(_version), Some(path)) = (words.next(), words.next(), words.next())
        else {
            continue;
        };
        let path = path.trim_start_matches('(').trim_end_matches(')');
        if path.starts_with(root.as_str()) && !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    names
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_judges_are_the_workspace_members_of_the_tree() {
        let tree = "host-interface v0.1.0 (/w/host-interface)\n\
                    hyp v0.1.0 (/w/hyp)\n\
                    sim v0.1.0 (/w/tests/sim)\n\
                    hyp v0.1.0 (/w/hyp) (*)\n\
                    serde v1.0.0\n\
                    other v0.1.0 (/elsewhere/other)\n";
        assert_eq!(
            workspace_members(tree, std::path::Path::new("/w")),
            ["host-interface", "hyp", "sim"]
        );
    }
}
