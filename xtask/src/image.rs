//! Where things run: the simulator now, the real EL2 image in QEMU once it
//! is built. Every place that must change when the image exists is in this
//! file:
//!
//! - [`REAL_IMAGE`]: flip to `true` so `cargo xtask test` checks QEMU and
//!   runs [`real_image_tests`];
//! - [`real_scenarios`]: `cargo xtask scenario` without `--sim`;
//! - [`real_image_tests`]: step 6 of `cargo xtask test`;
//! - [`run_demo`]: `cargo xtask run`;
//! - [`real_image_bench`]: the second half of `cargo xtask bench`.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::process::{self, Counts};
use crate::workspace_root;

/// Whether the EL2 image exists, so `cargo xtask test` must make sure QEMU
/// is installed and run the scenarios on it.
pub const REAL_IMAGE: bool = false;

/// `cargo xtask scenario FILE... [--cpu MODEL]` (without `--sim`): run the
/// files on the real image in QEMU with CPU `model`. QEMU (>= 10) and the
/// Rust target are already checked. Must print one line per failed
/// statement and the closing `N passed, N failed[, N skipped]` line, and
/// return success only when nothing failed.
pub fn real_scenarios(model: &str, files: &[PathBuf]) -> ExitCode {
    let _ = (model, files);
    eprintln!("xtask: the EL2 image is not built yet (issue: the EL2 image); use --sim");
    ExitCode::from(2)
}

/// Step 6 of `cargo xtask test`: every scenario file (paths relative to the
/// workspace root, which is the working directory) on the real image.
/// Add each runner's counts to `total` (see [`process::run_counted`]) and
/// return `Err(step name)` on the first failure; print a `==> STEP` header
/// per step.
pub fn real_image_tests(files: &[PathBuf], total: &mut Counts) -> Result<(), String> {
    let _ = (files, total);
    println!("==> scenarios (real image): skipped, the EL2 image does not exist yet");
    Ok(())
}

/// `cargo xtask run [--cpu MODEL]`: the main demo. For now the simulator's
/// `demo` binary; later the EL2 image and test host in QEMU (call
/// `crate::deps::ensure_qemu()` and `ensure_rust_target()` first then).
pub fn run_demo(model: &str) -> ExitCode {
    let mut cmd = process::cargo();
    cmd.arg("run")
        .arg("--manifest-path")
        .arg(workspace_root().join("Cargo.toml"))
        .args(["--release", "-q", "-p", "sim", "--bin", "demo", "--"])
        .args(["--cpu", model]);
    process::exit_code(process::status(&mut cmd))
}

/// The second half of `cargo xtask bench`: benchmarks on the real image.
pub fn real_image_bench() -> ExitCode {
    println!("==> bench (real image): skipped, image benchmarks come later");
    ExitCode::SUCCESS
}
