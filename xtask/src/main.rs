//! `cargo xtask`: the project's one entry point for building, running and
//! testing the hypervisor.
//!
//! Commands (see [`USAGE`]):
//! - `scenario FILE... [--cpu MODEL] [--sim]`: run scenario files;
//! - `test`: everything CI checks, stopping at the first failing step;
//! - `run [--cpu MODEL] [--linux]`: the main demo; with `--linux`, the real
//!   stack: Linux host, the VMM, a Linux guest;
//! - `bench [--pkvm] [--linux]`: the benchmarks;
//! - `fuzz [TARGET] [--time SECONDS] [--jobs N]`: coverage-guided fuzzing of the core;
//! - `mutants [CRATE] [ARGS...]`: mutation testing of the core.
//! - `linux [--cpu MODEL] [--smp N] [--kernel 6.1|7.3]`: Debian's kernel as the host, running
//!   the host driver's tests.
//! - `guest-kernel [--boot]`: the protected-guest kernel (Debian's
//!   linux-source-7.3, unmodified), optionally booted on bare QEMU.
//!
//! Std only, so that `cargo xtask` builds fast on a fresh machine. What runs
//! on the simulator and what runs on the real EL2 image in QEMU is decided
//! in [`image`], the one module to change when the image exists.

mod cli;
mod deps;
mod elf;
mod fuzz;
mod guest_kernel;
mod image;
mod init_script;
mod linux;
mod linux_bench;
mod mutants;
mod process;
mod pvm;
mod qemu;
mod test_all;
mod vmm;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use cli::Command;

/// CPU model used when `--cpu` is not given.
pub const DEFAULT_CPU: &str = "max";

/// The usage text printed by `--help`, with no arguments, and on a usage
/// error.
pub const USAGE: &str = "\
Usage: cargo xtask COMMAND [OPTIONS]

Commands:
  scenario FILE... [--cpu MODEL] [--sim]
        Run scenario files (tests/scenarios/*.scn) on the real EL2 image in
        QEMU, or with --sim against the hypervisor core on this machine.
        MODEL is a QEMU CPU name (cortex-a57, cortex-a710, neoverse-v1,
        neoverse-n2, max, ...; default: max). Prints one line per failed
        statement (file, line, expected, actual) and a closing line
        `N passed, N failed[, N skipped]`. Exit status 0 only if nothing
        failed.

  test
        Everything CI checks, each step under a `==> STEP` header:
        rustup targets and QEMU, cargo fmt --check and clippy -D warnings
        (workspace and the bare-metal crates), cargo test --workspace
        --release, every fuzz target for 30 s from its corpus, every
        scenario file on the simulator and then on the real
        image in QEMU for cortex-a57, cortex-a710, neoverse-v1 and max (the
        real image must give the simulator's counts), a two-CPU fuzz of
        the real image, then on the same four models interrupts into guests
        and guests misbehaving at random (calls, faults, unemulated
        registers), and on max the guest ABI fuzzed from inside guests on
        two CPUs; Debian's kernels as the host (see linux); last, the
        protected-guest kernel built and booted on bare QEMU (see
        guest-kernel). Stops at the first failing step and names it; ends
        with the scenario total `N passed, N failed[, N skipped]`.
        Exit status 0 only if everything passed.

  run [--cpu MODEL] [--linux]
        Boots the hypervisor in QEMU (default MODEL: max) with the test host
        narrating the tour of tests/demo: the CPU features found and what
        they allow, then each request and the hypervisor's answer.
        With --linux: the hypervisor, Debian's Linux as the host, the VMM
        (vmm/) in it, and a Linux guest in a normal VM with 2 vCPUs, whose
        console is shown; exit status 0 when the whole stack powered off
        cleanly.

  bench [--pkvm] [--linux]
        Per-page costs of the core on this machine (next to a bare
        aarch64-paging map+unmap), metadata per GiB, then instructions per
        call on the real image under QEMU -icount shift=0. Then Debian's
        6.1 as the host on max and cortex-a57, on the hypervisor and bare
        (and with --pkvm under pKVM, kvm-arm.mode=protected): boot to
        /init, reset to module load, and host calls timed by the module
        tests/linux-bench, side by side. --linux: only the Linux host.

  fuzz [TARGET] [--time SECONDS] [--jobs N]
        Coverage-guided fuzzing with cargo-fuzz (libFuzzer, stable Rust,
        installed if missing) of TARGET, or of every target in turn:
        host_calls, guest_exits, decode, device_tree, manifest (see
        tests/sim/src/fuzzing). Each runs SECONDS (default 60) from its
        seed corpus in fuzz/corpus and stops at the first crash or oracle
        failure, saved under fuzz/artifacts. Prints executions, exec/s and
        coverage per target. host_calls and guest_exits run as N libFuzzer
        processes (-jobs=N -workers=N; default: one per core for runs of 120 s or
        more, else one). Exit status 0 only if nothing failed.

  mutants [CRATE] [ARGS...]
        Mutation testing with cargo-mutants (installed if missing) of hyp,
        pagetables and host-interface, or only CRATE, each mutant judged by
        the tests of the crate and of every workspace package that depends
        on it (profile `mutants`), one at a time. ARGS go to cargo-mutants,
        e.g. --file hyp/src/vcpu.rs or --shard 0/8. Results in
        target/mutants/CRATE/mutants.out/.
  linux [--cpu MODEL] [--smp N] [--kernel 6.1|7.3]
        Boots Debian's arm64 Linux kernel (bookworm's 6.1 by default, or
        trixie-backports' 7.3; fetched with apt-get download and cached
        under target/linux) as the host on the hypervisor, with N CPUs
        (default 2), to an initramfs that loads the host driver
        (driver/) and runs its tests (tests/driver-test). The console is
        shown; exit status 0 only if the tests passed and the console shows
        no oops, warning or SError.

  guest-kernel [--boot]
        Builds the protected-guest kernel: Debian's linux-source-7.3
        (trixie-backports, pinned), unmodified, configured as arm64
        allnoconfig plus xtask/guest-kernel.config (pKVM guest driver,
        restricted DMA pool, virtio-mmio console and block, initramfs),
        cross-compiled with gcc-aarch64-linux-gnu; fails if kconfig dropped
        an option the fragment asks for. Cached under target/guest-kernel
        until the fragment, the package or the compiler changes. Prints the
        build time and the Image's path. With --boot, also boots it on bare
        QEMU (no hypervisor) to a busybox initramfs that reports through a
        virtio console and powers off.

Options:
  -h, --help    Print this text.

Missing tools are installed where possible (the aarch64-unknown-none Rust
target, QEMU >= 10 on Debian as root); otherwise xtask prints the commands
to run and exits 1. A usage error exits 2.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match cli::parse(&args) {
        Ok(Command::Help) => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Command::Scenario { files, cpu, sim }) => scenario(&cpu, &files, sim),
        Ok(Command::Test) => test_all::run(),
        Ok(Command::Run { cpu, linux: false }) => image::run_demo(&cpu),
        Ok(Command::Run { cpu, linux: true }) => vmm::run(&cpu),
        Ok(Command::Bench { pkvm, linux_only }) => bench(pkvm, linux_only),
        Ok(Command::Fuzz {
            target,
            seconds,
            jobs,
        }) => fuzz::run(target.as_deref(), seconds, jobs),
        Ok(Command::Mutants(args)) => mutants::run(&args),
        Ok(Command::Linux { cpu, smp, kernel }) => match linux::kernel(&kernel) {
            Some(k) => linux::run(&cpu, smp, k),
            None => {
                eprintln!("xtask: no kernel {kernel}");
                ExitCode::from(2)
            }
        },
        Ok(Command::GuestKernel { boot }) => guest_kernel::run(boot),
        Err(message) => {
            eprintln!("xtask: {message}\n");
            eprint!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// `cargo xtask scenario`.
fn scenario(cpu: &str, files: &[PathBuf], sim: bool) -> ExitCode {
    if sim {
        // Keep the caller's working directory so that the file names the
        // simulator prints are the ones the user typed.
        let mut cmd = process::sim_command(cpu);
        cmd.args(files);
        process::exit_code(process::status(&mut cmd))
    } else {
        deps::ensure_qemu();
        deps::ensure_rust_target();
        image::real_scenarios(cpu, files)
    }
}

/// `cargo xtask bench [--pkvm] [--linux]`.
fn bench(pkvm: bool, linux_only: bool) -> ExitCode {
    if !linux_only {
        let core = core_bench();
        if core != ExitCode::SUCCESS {
            return core;
        }
    }
    // The Linux host, on max and on cortex-a57 (no FWB).
    deps::ensure_qemu();
    // XTASK_ONLY picks among them as it does among the test steps.
    for cpu in ["max", "cortex-a57"] {
        let steps: [(String, &BenchStep); 3] = [
            (format!("bench: Linux host ({cpu})"), &|| {
                linux_bench::bench(cpu, pkvm)
            }),
            (format!("bench: Linux guest ({cpu})"), &|| vmm::bench(cpu)),
            (format!("bench: 7.3 pKVM guest kernel ({cpu})"), &|| {
                pvm::bench(cpu)
            }),
        ];
        for (name, run) in steps {
            if !test_all::selected(&name) {
                continue;
            }
            if let Err(e) = run() {
                eprintln!("xtask: step `{name}` failed: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

/// One step of `cargo xtask bench --linux`.
type BenchStep<'a> = dyn Fn() -> Result<(), String> + 'a;

/// The core's benchmarks: the simulator's, then the real image's.
fn core_bench() -> ExitCode {
    println!("==> bench (sim)");
    let mut cmd = process::cargo();
    cmd.arg("bench")
        .arg("--manifest-path")
        .arg(workspace_root().join("Cargo.toml"))
        .args(["-p", "sim"]);
    if !process::succeeded(&mut cmd) {
        eprintln!("xtask: step `bench (sim)` failed");
        return ExitCode::FAILURE;
    }
    image::real_image_bench()
}

/// The workspace root (the directory holding the root `Cargo.toml`).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or_else(|| Path::new("."))
}
