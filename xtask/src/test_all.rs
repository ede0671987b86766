//! `cargo xtask test`: everything CI checks, in order, stopping at the first
//! failing step.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use crate::process::{self, Counts};
use crate::{deps, image, linux, vmm, workspace_root};

/// The CPU models every scenario file runs on.
pub const CPU_MODELS: [&str; 4] = ["cortex-a57", "cortex-a710", "neoverse-v1", "max"];

/// Debian's kernels as the host: bookworm's 6.1 on every model with 2, 4
/// and 8 CPUs; trixie-backports' 7.3 on max (4 and 8) and neoverse-v1.
const LINUX_CONFIGS: [(&linux::Kernel, &str, u32); 15] = [
    (&linux::BOOKWORM, "cortex-a57", 2),
    (&linux::BOOKWORM, "cortex-a57", 4),
    (&linux::BOOKWORM, "cortex-a57", 8),
    (&linux::BOOKWORM, "cortex-a710", 2),
    (&linux::BOOKWORM, "cortex-a710", 4),
    (&linux::BOOKWORM, "cortex-a710", 8),
    (&linux::BOOKWORM, "neoverse-v1", 2),
    (&linux::BOOKWORM, "neoverse-v1", 4),
    (&linux::BOOKWORM, "neoverse-v1", 8),
    (&linux::BOOKWORM, "max", 2),
    (&linux::BOOKWORM, "max", 4),
    (&linux::BOOKWORM, "max", 8),
    (&linux::TRIXIE, "max", 4),
    (&linux::TRIXIE, "max", 8),
    (&linux::TRIXIE, "neoverse-v1", 4),
];

/// The Linux guest (Debian 6.1 in a normal VM, run by the VMM inside the
/// 6.1 host): the CPU models and host CPU counts.
const VMM_CONFIGS: [(&linux::Kernel, &str, u32); 2] = [
    (&linux::BOOKWORM, "max", 2),
    (&linux::BOOKWORM, "cortex-a57", 2),
];
/// The 7.3 pKVM guest kernel: protected on max and cortex-a57 (no FWB),
/// and once in a normal VM.
const PVM_CONFIGS: [(crate::pvm::Kind, &str, u32); 3] = [
    (crate::pvm::Kind::Protected, "max", 2),
    (crate::pvm::Kind::Protected, "cortex-a57", 2),
    (crate::pvm::Kind::Normal, "max", 2),
];

/// The bare-metal crates and their targets.
const BARE_METAL: [(&str, &str); 2] = [
    ("hyp/el2", "aarch64-unknown-none-softfloat"),
    ("tests/host-kernel", "aarch64-unknown-none"),
];

/// Where the scenario files live, relative to the workspace root.
const SCENARIO_DIR: &str = "tests/scenarios";

/// Runs every step; the exit status is 0 only if all passed.
pub fn run() -> ExitCode {
    let mut total = Counts::default();
    let result = steps(&mut total);
    // After an early failure no scenario ran, and `0 passed` would mislead.
    if result.is_ok() || total != Counts::default() {
        println!("==> scenario statements: {total}");
    }
    match result {
        Ok(()) if total.failed == 0 => {
            println!("xtask: all steps passed");
            ExitCode::SUCCESS
        }
        Ok(()) => {
            eprintln!("xtask: {} scenario statements failed", total.failed);
            ExitCode::FAILURE
        }
        Err(step) => {
            eprintln!("xtask: step `{step}` failed");
            ExitCode::FAILURE
        }
    }
}

/// The steps; `Err` names the first one that failed.
fn steps(total: &mut Counts) -> Result<(), String> {
    let root = workspace_root();
    let cargo = |args: &[&str]| {
        let mut cmd = process::cargo();
        cmd.args(args).current_dir(root);
        cmd
    };

    header("rust target");
    deps::ensure_rust_target();
    if image::REAL_IMAGE {
        header("qemu");
        deps::ensure_qemu();
    }

    step("fmt", cargo(&["fmt", "--all", "--", "--check"]))?;
    step(
        "clippy",
        cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    // The bare-metal crates are workspaces of their own (one target each).
    for (dir, target) in BARE_METAL {
        let in_crate = |args: &[&str]| {
            let mut cmd = process::cargo();
            cmd.args(args).current_dir(root.join(dir));
            cmd
        };
        step(
            &format!("fmt ({dir})"),
            in_crate(&["fmt", "--all", "--", "--check"]),
        )?;
        step(
            &format!("clippy ({dir})"),
            in_crate(&[
                "clippy",
                "--release",
                "--target",
                target,
                "--target-dir",
                "../../target/clippy-bare",
                "--",
                "-D",
                "warnings",
            ]),
        )?;
    }
    step("test", cargo(&["test", "--workspace", "--release"]))?;
    let fuzz_step = "fuzz (every target from its corpus)";
    if selected(fuzz_step) {
        header(fuzz_step);
        crate::fuzz::fuzz(&crate::fuzz::TARGETS, crate::fuzz::SMOKE_SECONDS).map_err(|e| {
            eprintln!("xtask: {e}");
            String::from("fuzz")
        })?;
    }

    let files = scenario_files()?;
    if files.is_empty() {
        println!("==> scenarios (sim): no scenario files in {SCENARIO_DIR}/*.scn, nothing to run");
    } else {
        for model in CPU_MODELS {
            let name = format!("scenarios (sim, {model})");
            if !selected(&name) {
                continue;
            }
            header(&name);
            let mut cmd = process::sim_command(model);
            cmd.args(&files).current_dir(root);
            match process::run_counted(&mut cmd) {
                Ok(counts) => *total += counts,
                Err((why, counts)) => {
                    *total += counts.unwrap_or_default();
                    eprintln!("xtask: {why}");
                    return Err(name);
                }
            }
        }
    }

    image::real_image_tests(&files, total)?;
    linux::tests(&LINUX_CONFIGS, total)?;
    vmm::tests(&VMM_CONFIGS)?;
    crate::guest_kernel::test()?;
    crate::pvm::tests(&PVM_CONFIGS)
}

/// Whether step `name` runs: always, unless the developer's `XTASK_ONLY`
/// (comma-separated parts of step names) leaves it out, which is said.
pub fn selected(name: &str) -> bool {
    let Ok(only) = std::env::var("XTASK_ONLY") else {
        return true;
    };
    let run = only
        .split(',')
        .any(|part| !part.is_empty() && name.contains(part));
    if !run {
        println!("==> {name}: skipped (XTASK_ONLY)");
    }
    run
}

fn header(name: &str) {
    println!("==> {name}");
}

/// Prints the step's header and command, runs it, and names the step if it
/// failed.
fn step(name: &str, mut cmd: Command) -> Result<(), String> {
    if !selected(name) {
        return Ok(());
    }
    println!("==> {name}: {}", process::describe(&cmd));
    if process::succeeded(&mut cmd) {
        Ok(())
    } else {
        Err(name.into())
    }
}

/// Every `tests/scenarios/*.scn`, sorted, relative to the workspace root.
/// A missing directory holds no files.
fn scenario_files() -> Result<Vec<PathBuf>, String> {
    let dir = workspace_root().join(SCENARIO_DIR);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            eprintln!("xtask: cannot read {}: {e}", dir.display());
            return Err("scenarios (sim)".into());
        }
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "scn") && p.is_file())
        .filter_map(|p| p.file_name().map(|n| PathBuf::from(SCENARIO_DIR).join(n)))
        .collect();
    files.sort();
    Ok(files)
}
