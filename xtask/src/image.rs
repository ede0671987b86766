//! The real EL2 image in QEMU: building the hypervisor and the test host,
//! packing scenario files into an initrd, running QEMU and reading the test
//! host's verdicts off the serial console.
//!
//! - [`real_scenarios`]: `cargo xtask scenario` without `--sim`;
//! - [`real_image_tests`]: the real-image step of `cargo xtask test`, which
//!   also checks that every verdict equals the simulator's;
//! - [`run_demo`]: `cargo xtask run`;
//! - [`real_image_bench`]: the second half of `cargo xtask bench`.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

use crate::deps;
use crate::elf::elf_to_image;
use crate::process::{self, Counts};
use crate::qemu::{mte_supported, QemuRun};
use crate::workspace_root;

/// The real image exists: `cargo xtask test` makes sure QEMU is installed
/// and runs the scenarios on it.
pub const REAL_IMAGE: bool = true;

/// Where the host image is loaded (the manifest's `host-image`).
const HOST_IMAGE_ADDR: u64 = 0x4400_0000;
/// CPUs QEMU gives the machine.
const SMP: u32 = 8;
/// A run that takes longer than this has hung.
const TIMEOUT: Duration = Duration::from_secs(300);
/// The line the test host ends with: `TESTHOST DONE <status>`.
const DONE: &str = "TESTHOST DONE ";

/// The two bare-metal images, as arm64 Image files.
pub struct Images {
    /// The hypervisor (`hyp/el2`).
    pub hyp: PathBuf,
    /// The test host kernel (`tests/host-kernel`).
    pub host: PathBuf,
}

fn out_dir() -> PathBuf {
    workspace_root().join("target").join("xtask")
}

/// Build one bare-metal crate (its own workspace, with its own target in
/// `.cargo/config.toml`) and convert its ELF to an Image.
fn build_image(dir: &str, target: &str, bin: &str, out: &str) -> Result<PathBuf, String> {
    let root = workspace_root();
    let crate_dir = root.join(dir);
    let target_dir = root.join("target").join(bin);
    let mut cmd = process::cargo();
    // Run inside the crate so its .cargo/config.toml applies.
    cmd.current_dir(&crate_dir)
        .args(["build", "--release", "-q", "--target", target])
        .arg("--target-dir")
        .arg(&target_dir);
    if !process::succeeded(&mut cmd) {
        return Err(format!("building {dir} failed"));
    }
    let elf_path = target_dir.join(target).join("release").join(bin);
    let elf = fs::read(&elf_path).map_err(|e| format!("{}: {e}", elf_path.display()))?;
    let image = elf_to_image(&elf).map_err(|e| format!("{}: {e}", elf_path.display()))?;
    fs::create_dir_all(out_dir()).map_err(|e| e.to_string())?;
    let path = out_dir().join(out);
    fs::write(&path, image).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// Build the hypervisor and the test host.
pub fn build_images() -> Result<Images, String> {
    deps::ensure_rust_target();
    Ok(Images {
        hyp: build_image(
            "hyp/el2",
            "aarch64-unknown-none-softfloat",
            "hyp-el2",
            "hyp.bin",
        )?,
        host: build_image(
            "tests/host-kernel",
            "aarch64-unknown-none",
            "test-host",
            "test-host.bin",
        )?,
    })
}

/// What the test host does with the initrd.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Run scenario files, printing failures and the tally.
    Scenarios,
    /// `cargo xtask run`: narrate every statement of the files, then run
    /// the protected guest demonstration (console, shared buffer, secret).
    /// (The test host's `trace` mode narrates without the guest; nothing
    /// here asks for it.)
    Demo,
    /// Measure per-call costs with the generic counter.
    Bench,
    /// Fire random hypercalls, then check the hypervisor still answers.
    Fuzz,
    /// Interrupts into guests (list registers, the virtual timer) and
    /// preemption of a spinning guest.
    Irq,
    /// Guests calling the hypervisor with random arguments, faulting and
    /// touching unemulated registers.
    GuestFuzz,
    /// Guests on two CPUs fuzzing the guest ABI from inside.
    AbiFuzz,
    /// Device DMA through the SMMU, and the withheld bus masters.
    Dma,
    /// A hostile host and hostile guests reaching for each other's CPU
    /// state; protected vCPU start; SMCs; the largest VM.
    Isolation,
}

/// Pack `files` into the initrd format the test host reads:
/// `pkvm-scenarios 1 cpu=MODEL [demo|bench|fuzz|irq|guestfuzz|abifuzz|isolation|dma]`, then
/// `=== FILE <path>`
/// and the text of each file.
fn initrd(model: &str, files: &[PathBuf], mode: Mode) -> Result<PathBuf, String> {
    let mut blob = format!(
        "pkvm-scenarios 1 cpu={model}{}\n",
        match mode {
            Mode::Scenarios => "",
            Mode::Demo => " demo",
            Mode::Bench => " bench",
            Mode::Fuzz => " fuzz",
            Mode::Irq => " irq",
            Mode::GuestFuzz => " guestfuzz",
            Mode::AbiFuzz => " abifuzz",
            Mode::Dma => " dma",
            Mode::Isolation => " isolation",
        }
    );
    for f in files {
        let text = fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        blob.push_str(&format!("=== FILE {}\n{text}", f.display()));
        if !text.ends_with('\n') {
            blob.push('\n');
        }
    }
    fs::create_dir_all(out_dir()).map_err(|e| e.to_string())?;
    let path = out_dir().join(format!("initrd-{model}.txt"));
    fs::write(&path, blob).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// What one QEMU run printed and how the test host ended.
pub struct RealRun {
    /// Console lines, the test host's sentinel removed.
    pub lines: Vec<String>,
    /// The test host's exit status, or None if it never finished.
    pub status: Option<u32>,
}

/// Boot the hypervisor with the test host on `model` and run `files`.
pub fn run_real(
    images: &Images,
    model: &str,
    files: &[PathBuf],
    mode: Mode,
    echo: bool,
) -> Result<RealRun, String> {
    run_real_on(images, model, files, mode, echo, true)
}

/// [`run_real`], with or without the SMMU (the bench's baseline).
fn run_real_on(
    images: &Images,
    model: &str,
    files: &[PathBuf],
    mode: Mode,
    echo: bool,
    smmu: bool,
) -> Result<RealRun, String> {
    let initrd = initrd(model, files, mode)?;
    let mut extra = Vec::new();
    if matches!(mode, Mode::Bench | Mode::Irq) {
        // One tick of CNTVCT is one instruction, the same from run to run
        // (for `irq`: time slices and timer deadlines in instructions).
        extra.extend(["-icount", "shift=0,sleep=off", "-seed", "1"].map(String::from));
    }
    // For profiling: e.g. `-d in_asm,exec,nochain -dfilter 0x40000000+0x4000000
    // -D /tmp/exec-%d.log` counts what EL2 executes (README, Costs).
    if let Ok(more) = std::env::var("XTASK_QEMU_EXTRA") {
        extra.extend(more.split_whitespace().map(String::from));
    }
    let run = QemuRun {
        cpu: model.to_string(),
        mte: mte_supported(model),
        smmu,
        smp: SMP,
        kernel: images.hyp.clone(),
        initrd: Some(initrd),
        loader: vec![(images.host.clone(), HOST_IMAGE_ADDR)],
        extra,
        timeout: TIMEOUT,
    };
    let out = run.run(&deps::qemu_binary(), echo)?;
    let mut status = None;
    let mut lines = Vec::new();
    for l in out.text.lines() {
        let l = l.trim_end_matches('\r');
        match l.strip_prefix(DONE) {
            Some(s) => status = s.trim().parse().ok(),
            None => lines.push(l.to_string()),
        }
    }
    if out.timed_out {
        lines.push(format!(
            "xtask: QEMU did not finish within {}s",
            TIMEOUT.as_secs()
        ));
    }
    Ok(RealRun { lines, status })
}

fn closing_counts(lines: &[String]) -> Option<Counts> {
    lines.iter().rev().find_map(|l| Counts::parse(l))
}

/// `cargo xtask scenario FILE... [--cpu MODEL]` on the real image.
pub fn real_scenarios(model: &str, files: &[PathBuf]) -> ExitCode {
    let images = match build_images() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("xtask: {e}");
            return ExitCode::from(2);
        }
    };
    match run_real(&images, model, files, Mode::Scenarios, false) {
        Ok(r) => {
            for l in r.lines.iter().filter(|l| !is_boot_chatter(l)) {
                println!("{l}");
            }
            match (r.status, closing_counts(&r.lines)) {
                (Some(0), Some(_)) => ExitCode::SUCCESS,
                (None, _) | (_, None) => {
                    eprintln!("xtask: the test host did not finish (see the console output above)");
                    ExitCode::from(1)
                }
                _ => ExitCode::from(1),
            }
        }
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::from(2)
        }
    }
}

/// The hypervisor's own boot lines, not scenario output.
fn is_boot_chatter(l: &str) -> bool {
    l.starts_with("hyp: ") || l.starts_with("pkvm-rs hypervisor") || l.is_empty()
}

/// The real-image step of `cargo xtask test`: on each CPU model, run every
/// file the image supports and require the same counts as the simulator.
pub fn real_image_tests(files: &[PathBuf], total: &mut Counts) -> Result<(), String> {
    println!("==> build: EL2 image and test host");
    let images = build_images()?;
    let run = files;
    for model in crate::test_all::CPU_MODELS {
        let step = format!("scenarios (real image, {model})");
        if !crate::test_all::selected(&step) {
            continue;
        }
        println!("==> {step}");
        let real = run_real(&images, model, run, Mode::Scenarios, false)
            .map_err(|e| format!("{step}: {e}"))?;
        for l in real.lines.iter().filter(|l| !is_boot_chatter(l)) {
            println!("{l}");
        }
        let Some(counts) = closing_counts(&real.lines) else {
            return Err(format!("{step}: the test host did not finish"));
        };
        *total += counts;
        if real.status != Some(0) || counts.failed != 0 {
            return Err(step);
        }
        // The same files on the simulator must give the same verdicts.
        let sim_counts = sim_counts(model, run).map_err(|e| format!("{step}: simulator: {e}"))?;
        if sim_counts != counts {
            println!("xtask: real image {counts} but simulator {sim_counts}");
            return Err(format!("{step}: verdicts differ from --sim"));
        }
        println!("same verdicts as --sim: {counts}");
    }
    // Random hypercalls from two CPUs at once must neither crash nor hang
    // the hypervisor, and leave it answering correctly.
    mode_step(
        &images,
        "max",
        Mode::Fuzz,
        "fuzz (real image, max, 8 CPUs)",
        total,
    )?;
    // The device tree's CPU count sizes the stacks: the limit boots and
    // probes every CPU, one more is refused with a boot error.
    cpu_limit_step(&images, total)?;
    // Devices reach what the host owns and nothing else (RULES.md S1).
    for model in crate::test_all::CPU_MODELS {
        let step = format!("DMA isolation (real image, {model})");
        dma_step(&images, model, &step, total)?;
    }
    // Interrupts reach guests through the list registers on every model.
    for model in crate::test_all::CPU_MODELS {
        let step = format!("guest interrupts (real image, {model})");
        mode_step(&images, model, Mode::Irq, &step, total)?;
    }
    // Misbehaving guests neither crash nor hang the hypervisor.
    for model in crate::test_all::CPU_MODELS {
        let step = format!("guest fuzz (real image, {model})");
        mode_step(&images, model, Mode::GuestFuzz, &step, total)?;
    }
    // A hostile host and hostile guests against each other's CPU state,
    // on every model and on neoverse-n2 (FWB, DIC, MTE, SVE).
    for model in crate::test_all::CPU_MODELS.iter().chain(&["neoverse-n2"]) {
        let step = format!("isolation (real image, {model})");
        mode_step(&images, model, Mode::Isolation, &step, total)?;
    }
    // Guests on both CPUs at once fuzz the guest ABI from inside.
    mode_step(
        &images,
        "max",
        Mode::AbiFuzz,
        "guest ABI fuzz (real image, max, 2 CPUs)",
        total,
    )?;
    Ok(())
}

/// The hypervisor alone (no host image) on `max` with 256 CPUs, the limit
/// (`hyp::cpu_area::MAX_CPUS`): every CPU gets a stack and answers the
/// probe; with 257 the boot stops with its error.
fn cpu_limit_step(images: &Images, total: &mut Counts) -> Result<(), String> {
    let step = "CPU count (real image, max, 256 and 257 CPUs)";
    if !crate::test_all::selected(step) {
        return Ok(());
    }
    println!("==> {step}");
    let checks = [
        (256, "hyp: 256 CPUs; features on every CPU"),
        (
            257,
            "hyp: cannot boot: more CPUs in the device tree than the hypervisor supports (256)",
        ),
    ];
    let mut counts = Counts::default();
    for (smp, want) in checks {
        let run = QemuRun {
            cpu: "max".into(),
            mte: false,
            smmu: true,
            smp,
            kernel: images.hyp.clone(),
            initrd: None,
            loader: Vec::new(),
            extra: Vec::new(),
            timeout: Duration::from_secs(120),
        };
        let out = run
            .run(&deps::qemu_binary(), false)
            .map_err(|e| format!("{step}: {e}"))?;
        let ok = !out.timed_out
            && out.text.lines().any(|l| l.starts_with(want))
            && !out.text.contains("did not answer");
        if ok {
            counts.passed += 1;
            println!("PASS {smp} CPUs: {want}");
        } else {
            counts.failed += 1;
            println!("FAIL {smp} CPUs: want `{want}`; the console:\n{}", out.text);
        }
    }
    println!("{counts}");
    *total += counts;
    if counts.failed != 0 {
        return Err(step.into());
    }
    Ok(())
}

/// One test-host mode without files as a step of `cargo xtask test`: its
/// output, and its closing counts added to `total`.
fn mode_step(
    images: &Images,
    model: &str,
    mode: Mode,
    step: &str,
    total: &mut Counts,
) -> Result<(), String> {
    if !crate::test_all::selected(step) {
        return Ok(());
    }
    println!("==> {step}");
    let r = run_real(images, model, &[], mode, false).map_err(|e| format!("{step}: {e}"))?;
    for l in r.lines.iter().filter(|l| !is_boot_chatter(l)) {
        println!("{l}");
    }
    match (r.status, closing_counts(&r.lines)) {
        (Some(0), Some(c)) => {
            *total += c;
            Ok(())
        }
        _ => Err(step.to_string()),
    }
}

/// The `dma` mode as a step: the test host's checks, plus the SMMU's fault
/// reports between its markers ([`fault_markers`]), each one statement.
fn dma_step(images: &Images, model: &str, step: &str, total: &mut Counts) -> Result<(), String> {
    if !crate::test_all::selected(step) {
        return Ok(());
    }
    println!("==> {step}");
    let r = run_real(images, model, &[], Mode::Dma, false).map_err(|e| format!("{step}: {e}"))?;
    for l in r
        .lines
        .iter()
        .filter(|l| !is_boot_chatter(l) || is_smmu_line(l))
    {
        if !l.starts_with("dma: ok:") && !l.starts_with("dma: expect") && l != "dma: end" {
            println!("{l}");
        }
    }
    let markers = fault_markers(&r.lines);
    for e in &markers.errors {
        println!("xtask: {e}");
    }
    println!(
        "SMMU fault reports: {} as expected, {} not",
        markers.counts.passed, markers.counts.failed
    );
    *total += markers.counts;
    match (r.status, closing_counts(&r.lines)) {
        (Some(0), Some(c)) if markers.counts.failed == 0 && markers.counts.passed > 0 => {
            *total += c;
            Ok(())
        }
        _ => Err(step.to_string()),
    }
}

fn is_smmu_line(l: &str) -> bool {
    l.starts_with("hyp: SMMU")
}

/// What [`fault_markers`] found.
#[derive(Debug, Default)]
pub struct FaultMarkers {
    /// One statement per marked DMA.
    pub counts: Counts,
    /// Why each failed one failed.
    pub errors: Vec<String>,
}

/// Check the SMMU's reports against the test host's markers: between
/// `dma: expect fault: WHAT` and the next `dma: end` the hypervisor printed
/// at least one `hyp: SMMU fault: F_...` line (a translation, address-size,
/// access or permission fault); between `dma: expect no fault: WHAT` and
/// `dma: end`, none at all. A marker without its end fails.
pub fn fault_markers(lines: &[String]) -> FaultMarkers {
    let mut out = FaultMarkers::default();
    let mut open: Option<(bool, &str, usize)> = None;
    for l in lines {
        if let Some(what) = l.strip_prefix("dma: expect fault: ") {
            if let Some((_, w, _)) = open {
                out.counts.failed += 1;
                out.errors.push(format!("DMA `{w}`: no end marker"));
            }
            open = Some((true, what, 0));
        } else if let Some(what) = l.strip_prefix("dma: expect no fault: ") {
            if let Some((_, w, _)) = open {
                out.counts.failed += 1;
                out.errors.push(format!("DMA `{w}`: no end marker"));
            }
            open = Some((false, what, 0));
        } else if l.starts_with("hyp: SMMU fault: ") {
            if let Some((_, _, n)) = open.as_mut() {
                if l.starts_with("hyp: SMMU fault: F_") {
                    *n += 1;
                }
            }
        } else if l == "dma: end" {
            match open.take() {
                Some((expect, _, n)) if expect == (n > 0) => out.counts.passed += 1,
                Some((true, what, _)) => {
                    out.counts.failed += 1;
                    out.errors
                        .push(format!("DMA `{what}`: blocked, but no SMMU fault reported"));
                }
                Some((false, what, n)) => {
                    out.counts.failed += 1;
                    out.errors
                        .push(format!("DMA `{what}`: {n} SMMU faults, expected none"));
                }
                None => {}
            }
        }
    }
    if let Some((_, what, _)) = open {
        out.counts.failed += 1;
        out.errors.push(format!("DMA `{what}`: no end marker"));
    }
    out
}

/// `cargo xtask run [--cpu MODEL]`: boot the hypervisor in QEMU with the test
/// host narrating the tour of `tests/demo/`, then running a protected guest
/// that prints through a console the host emulates, shares a buffer and
/// keeps a secret the host cannot read.
pub fn run_demo(model: &str) -> ExitCode {
    deps::ensure_qemu();
    let images = match build_images() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("xtask: {e}");
            return ExitCode::from(2);
        }
    };
    let mut tour: Vec<PathBuf> = match fs::read_dir(workspace_root().join("tests/demo")) {
        Ok(d) => d
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "scn"))
            .collect(),
        Err(e) => {
            eprintln!("xtask: tests/demo: {e}");
            return ExitCode::from(2);
        }
    };
    tour.sort();
    let rel: Vec<PathBuf> = tour
        .iter()
        .map(|p| p.strip_prefix(workspace_root()).unwrap_or(p).to_path_buf())
        .collect();
    match run_real(&images, model, &rel, Mode::Demo, true) {
        Ok(r) if r.status == Some(0) => ExitCode::SUCCESS,
        Ok(_) => {
            eprintln!("xtask: the demo did not end cleanly");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::from(2)
        }
    }
}

/// The second half of `cargo xtask bench`: per-call costs on the real image
/// under `-icount shift=0`, read by the test host from the generic counter.
pub fn real_image_bench() -> ExitCode {
    deps::ensure_qemu();
    let images = match build_images() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("xtask: {e}");
            return ExitCode::from(2);
        }
    };
    // `XTASK_BENCH_CPU` picks another CPU model (issue 12 asks for
    // cortex-a57 as well as max).
    let model = std::env::var("XTASK_BENCH_CPU").unwrap_or_else(|_| "max".into());
    let model = model.as_str();
    println!("==> bench (real image, -cpu {model} -icount shift=0)");
    let with = match run_real(&images, model, &[], Mode::Bench, false) {
        Ok(r) => {
            for l in r.lines.iter().filter(|l| !is_boot_chatter(l)) {
                println!("{l}");
            }
            if r.status != Some(0) {
                return ExitCode::from(1);
            }
            r
        }
        Err(e) => {
            eprintln!("xtask: {e}");
            return ExitCode::from(2);
        }
    };
    // The same bench on the machine without the SMMU: the difference is
    // what keeping the DMA view in step costs.
    println!("==> bench (real image, the same machine without the SMMU)");
    let without = match run_real_on(&images, model, &[], Mode::Bench, false, false) {
        Ok(r) if r.status == Some(0) => r,
        Ok(_) => return ExitCode::from(1),
        Err(e) => {
            eprintln!("xtask: {e}");
            return ExitCode::from(2);
        }
    };
    for (what, a, b) in smmu_costs(&with.lines, &without.lines) {
        println!(
            "bench: the SMMU adds to {what}: {} instructions ({b} -> {a})",
            a as i64 - b as i64
        );
    }
    ExitCode::SUCCESS
}

/// Rows of the bench that the SMMU's DMA view can change: (name, with the
/// SMMU, without), for each row both runs printed.
fn smmu_costs(with: &[String], without: &[String]) -> Vec<(String, u64, u64)> {
    const ROWS: [&str; 5] = [
        "HYP_VERSION round trip",
        "host stage-2 fault (first touch of a 2 MiB region)",
        "SHARE_HYP+UNSHARE_HYP, 1 page",
        "SHARE_HYP+UNSHARE_HYP, 512 pages",
        "guest stage-2 fault served by GUEST_DONATE",
    ];
    let value = |lines: &[String], row: &str| {
        lines.iter().find_map(|l| {
            let rest = l.strip_prefix("bench: ")?.strip_prefix(row)?;
            let rest = rest.strip_prefix(": ")?;
            rest.split_whitespace()
                .next()?
                .replace(',', "")
                .parse::<u64>()
                .ok()
        })
    };
    ROWS.iter()
        .filter_map(|row| Some((row.to_string(), value(with, row)?, value(without, row)?)))
        .collect()
}

/// The simulator's counts for `files` on `model`, without echoing its output.
fn sim_counts(model: &str, files: &[PathBuf]) -> Result<Counts, String> {
    let mut c: Command = process::sim_command(model);
    c.args(files).current_dir(workspace_root());
    let out = c.output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .rev()
        .find_map(Counts::parse)
        .ok_or_else(|| "no closing line".to_string())
}

#[cfg(test)]
mod fault_marker_tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(String::from).collect()
    }

    #[test]
    fn smmu_cost_rows() {
        let with = lines(
            "bench: HYP_VERSION round trip: 340 instructions\n\
             bench: SHARE_HYP+UNSHARE_HYP, 512 pages: 150,000 instructions (292 per page)\n\
             bench: guest stage-2 fault served by GUEST_DONATE: 16000 instructions",
        );
        let without = lines(
            "bench: HYP_VERSION round trip: 319 instructions\n\
             bench: SHARE_HYP+UNSHARE_HYP, 512 pages: 140598 instructions (274 per page)",
        );
        let rows = smmu_costs(&with, &without);
        assert_eq!(
            rows,
            [
                ("HYP_VERSION round trip".to_string(), 340, 319),
                (
                    "SHARE_HYP+UNSHARE_HYP, 512 pages".to_string(),
                    150_000,
                    140_598
                ),
            ]
        );
    }

    #[test]
    fn markers_and_faults() {
        let m = fault_markers(&lines(
            "dma: expect no fault: a\n\
             dma: end\n\
             dma: expect fault: b\n\
             hyp: SMMU fault: F_TRANSLATION stream 0x8 read 0x1 (faults=1)\n\
             dma: end\n\
             dma: expect fault: c\n\
             hyp: SMMU fault: C_BAD_STE stream 0x8 read 0x0 (faults=1)\n\
             dma: end\n\
             dma: expect no fault: d\n\
             hyp: SMMU fault: F_PERMISSION stream 0x8 write 0x1 (faults=2)\n\
             dma: end\n\
             dma: expect fault: e",
        ));
        assert_eq!(m.counts.passed, 2);
        assert_eq!(m.counts.failed, 3);
        assert!(m.errors[0].contains("`c`"), "{:?}", m.errors);
        assert!(m.errors[1].contains("`d`"));
        assert!(m.errors[2].contains("no end marker"));
        assert_eq!(fault_markers(&[]).counts, Counts::default());
    }
}
