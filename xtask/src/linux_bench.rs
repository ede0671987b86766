//! The Linux-host part of `cargo xtask bench`: Debian's 6.1 kernel boots
//! as the host under `-icount shift=0,sleep=off -seed 1` (one instruction
//! per nanosecond of virtual time), once on this hypervisor, once bare
//! (QEMU without EL2, the same RAM given to the kernel) and, with `--pkvm`,
//! once under pKVM (the same kernel with `kvm-arm.mode=protected`), each
//! with the same busybox initramfs and benchmark module
//! (`tests/linux-bench`). Each boot reports:
//! - boot to /init: the printk time of `Run /init as init process` (the
//!   kernel's clock starts at its `time_init`);
//! - reset to module load: the generic counter when the module loads,
//!   counted from the machine's reset, the hypervisor's own boot included;
//! - per host call, the instructions at EL2, the module's loop subtracted.
//!
//! The module times this project's calls on this hypervisor and pKVM's
//! equivalents under pKVM; rows with the same name line up. With
//! `XTASK_BENCH_ECHO` set, each boot's console is printed too.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::linux::{self, CpioEntry, BOOKWORM, FILE};
use crate::qemu::{self, QemuRun};
use crate::{deps, image, workspace_root};

/// RAM the host kernel gets in every configuration: what the hypervisor
/// leaves it of QEMU's 1 GiB (it keeps 128 MiB); `mem=` gives the others
/// the same.
const HOST_MIB: u32 = 896;
/// One boot's time limit.
const TIMEOUT: Duration = Duration::from_secs(600);
/// The initramfs's `/init`: the printk line of `/init`, the module (with
/// the hypervisor named by `bench=` on the command line), its lines, power
/// off.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t devtmpfs devtmpfs /dev
echo "pkvm_rs_bench: /init mounted" > /dev/kmsg
dmesg | grep -m1 "Run /init as init process" | sed 's/^/BENCH /'
echo "pkvm_rs_bench: /init insmod" > /dev/kmsg
case " $(cat /proc/cmdline) " in
*" bench=pkvm "*) insmod /pkvm_rs_bench.ko hyp=pkvm && rmmod pkvm_rs_bench ;;
*" bench=pkvm-rs "*) insmod /pkvm_rs_bench.ko hyp=pkvm-rs && rmmod pkvm_rs_bench ;;
*) insmod /pkvm_rs_bench.ko hyp=none && rmmod pkvm_rs_bench ;;
esac
dmesg | grep pkvm_rs_bench | sed 's/^/BENCH /'
echo "BENCH DONE"
poweroff -f
"#;

/// Where the host kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    /// On this hypervisor.
    PkvmRs,
    /// Under pKVM: the kernel at EL2 with `kvm-arm.mode=protected`.
    Pkvm,
    /// With no EL2 at all.
    Bare,
}

impl Host {
    fn name(self) -> &'static str {
        match self {
            Host::PkvmRs => "pkvm-rs",
            Host::Pkvm => "pKVM",
            Host::Bare => "bare",
        }
    }
}

/// What one boot measured, in instructions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Figures {
    /// Boot to /init.
    pub init: Option<u64>,
    /// Reset to module load.
    pub module_load: Option<u64>,
    /// (row, instructions at EL2 per call or pair), in the module's order.
    pub rows: Vec<(String, f64)>,
    /// The module's lines for rows whose calls were refused.
    pub refused: Vec<String>,
}

/// Reads a boot's `BENCH ` lines.
pub fn parse(console: &str) -> Figures {
    let mut f = Figures::default();
    for line in console.lines() {
        let Some(line) = line.trim().strip_prefix("BENCH ") else {
            continue;
        };
        // `[    0.805747] text`
        let text = line
            .split_once(']')
            .map_or(line, |(_, rest)| rest.trim_start());
        if text.starts_with("Run /init as init process") {
            let stamp = line
                .trim_start_matches('[')
                .split(']')
                .next()
                .and_then(|s| s.trim().parse::<f64>().ok());
            f.init = stamp.map(|s| (s * 1e9).round() as u64);
        } else if let Some(rest) = text.strip_prefix("pkvm_rs_bench: reset to module load: ") {
            f.module_load = rest.split(' ').next().and_then(|n| n.parse().ok());
        } else if let Some(rest) = text.strip_prefix("pkvm_rs_bench: ") {
            if let Some((row, value)) = rest.split_once(": ") {
                if value.starts_with("refused") {
                    f.refused.push(rest.to_string());
                } else if let Some(n) = value
                    .strip_suffix(')')
                    .and_then(|v| v.split_once(" instructions at EL2"))
                    .and_then(|(n, _)| n.parse::<f64>().ok())
                {
                    f.rows.push((row.to_string(), n));
                }
            }
        }
    }
    f
}

/// Builds the benchmark module against the unpacked headers.
fn build_module(root: &Path) -> Result<PathBuf, String> {
    let k = &BOOKWORM;
    let headers = root
        .join("usr/src")
        .join(format!("linux-headers-{}-arm64", k.abi));
    let build = linux::linux_dir().join(k.abi).join("bench-module");
    linux::sync_dir(&workspace_root().join("tests/linux-bench"), &build)?;
    let mut make = Command::new("nice");
    make.args(["-n", "10", "make", "-s", "-C"])
        .arg(&headers)
        .arg(format!("M={}", build.display()))
        .args(["ARCH=arm64", &format!("CROSS_COMPILE={}", linux::CROSS)])
        .args(k.make_overrides)
        .arg("modules");
    linux::run_checked(&mut make).map_err(|e| format!("building the bench module: {e}"))?;
    Ok(build.join("pkvm_rs_bench.ko"))
}

/// Writes the bench initramfs; returns its path.
fn initramfs(root: &Path, module: &Path) -> Result<PathBuf, String> {
    let read = |p: &Path| fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let busybox = read(&root.join("bin/busybox"))?;
    let module = read(module)?;
    let mut entries = linux::busybox_root(&busybox, INIT.as_bytes());
    entries.push(CpioEntry::file("pkvm_rs_bench.ko", FILE, &module));
    let path = linux::linux_dir()
        .join(BOOKWORM.abi)
        .join("bench-initramfs.cpio");
    fs::write(&path, linux::cpio_newc(&entries)).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// Boots once on `host`; returns the console.
fn boot(host: Host, cpu: &str, hyp: &Path, kernel: &Path, initrd: &Path) -> Result<String, String> {
    let mut append = String::from("console=ttyAMA0 panic=-1 quiet");
    match host {
        Host::PkvmRs => append.push_str(" bench=pkvm-rs"),
        Host::Pkvm => append.push_str(&format!(
            " bench=pkvm kvm-arm.mode=protected mem={HOST_MIB}M"
        )),
        Host::Bare => append.push_str(&format!(" bench=none mem={HOST_MIB}M")),
    }
    let (boot_image, loader) = match host {
        Host::PkvmRs => (
            hyp.to_path_buf(),
            vec![(kernel.to_path_buf(), linux::HOST_IMAGE_ADDR)],
        ),
        Host::Pkvm | Host::Bare => (kernel.to_path_buf(), Vec::new()),
    };
    let run = QemuRun {
        cpu: cpu.to_string(),
        mte: qemu::mte_supported(cpu),
        smmu: true,
        smp: 1,
        kernel: boot_image,
        initrd: Some(initrd.to_path_buf()),
        loader,
        extra: [
            "-icount",
            "shift=0,sleep=off",
            "-seed",
            "1",
            "-rtc",
            "base=2026-01-01T00:00:00,clock=vm",
            "-append",
            &append,
        ]
        .map(String::from)
        .to_vec(),
        timeout: TIMEOUT,
    };
    let mut args = run.args();
    if host == Host::Bare {
        // The same machine without EL2.
        for a in &mut args {
            if a.to_str() == Some(qemu::MACHINE) || a.to_string_lossy().starts_with("virt,") {
                *a = a
                    .to_string_lossy()
                    .replace("virtualization=on", "virtualization=off")
                    .into();
            }
        }
    }
    let mut cmd = Command::new(deps::qemu_binary());
    cmd.args(args);
    let out = qemu::run_command(cmd, TIMEOUT, false)?;
    if let Some(why) = linux::judge_console(&out.text) {
        return Err(format!("{}: {why}", host.name()));
    }
    if out.timed_out || !out.text.contains("BENCH DONE") {
        let tail: Vec<&str> = out.text.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "{}: the boot did not finish{}:\n{}",
            host.name(),
            if out.timed_out { " (timed out)" } else { "" },
            tail.join("\n")
        ));
    }
    Ok(out.text)
}

/// `a` against `b`: `+N (+P %)`.
fn delta(a: u64, b: u64) -> String {
    let d = a as i64 - b as i64;
    format!("{d:+} ({:+.2} %)", d as f64 * 100.0 / b.max(1) as f64)
}

/// The Linux-host bench on `cpu`: this hypervisor and bare, and pKVM with
/// `pkvm`. Prints a table; an error names what failed.
pub fn bench(cpu: &str, pkvm: bool) -> Result<(), String> {
    println!(
        "==> bench: Linux host ({}, -cpu {cpu}, 1 CPU, {HOST_MIB} MiB, -icount shift=0,sleep=off -seed 1)",
        BOOKWORM.name
    );
    let root = linux::fetch_and_unpack(&BOOKWORM)?;
    linux::ensure_cross_compiler()?;
    let module = build_module(&root)?;
    let initrd = initramfs(&root, &module)?;
    let hyp = image::build_images()?.hyp;
    let kernel = root.join(BOOKWORM.image_path);
    let mut hosts = vec![Host::PkvmRs];
    if pkvm {
        hosts.push(Host::Pkvm);
    }
    hosts.push(Host::Bare);
    let mut figures = Vec::new();
    for &host in &hosts {
        let console = boot(host, cpu, &hyp, &kernel, &initrd)?;
        let f = parse(&console);
        if f.init.is_none() {
            return Err(format!("{}: no `Run /init` line", host.name()));
        }
        if f.module_load.is_none() || (host != Host::Bare && f.rows.is_empty()) {
            let lines: Vec<&str> = console.lines().filter(|l| l.contains("BENCH")).collect();
            return Err(format!(
                "{}: the module reported nothing:\n{}",
                host.name(),
                lines.join("\n")
            ));
        }
        for r in &f.refused {
            println!("bench: under {}: {r}", host.name());
        }
        if host == Host::PkvmRs && !f.refused.is_empty() {
            return Err("this hypervisor refused a timed call".into());
        }
        if std::env::var_os("XTASK_BENCH_ECHO").is_some() {
            println!("{console}");
        }
        figures.push((host, f));
    }
    print!("{}", table(&figures));
    Ok(())
}

/// The figures as a table (instructions), then the comparisons.
pub fn table(figures: &[(Host, Figures)]) -> String {
    let mut out = String::new();
    let header: Vec<&str> = figures.iter().map(|(h, _)| h.name()).collect();
    out.push_str(&format!("| | {} |\n", header.join(" | ")));
    out.push_str(&format!("|---|{}\n", "---|".repeat(figures.len())));
    let cell = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let mut row = |name: &str, cells: Vec<String>| {
        out.push_str(&format!("| {name} | {} |\n", cells.join(" | ")));
    };
    row(
        "boot to /init",
        figures
            .iter()
            .map(|(_, f)| cell(f.init.map(|n| n.to_string())))
            .collect(),
    );
    row(
        "reset to module load",
        figures
            .iter()
            .map(|(_, f)| cell(f.module_load.map(|n| n.to_string())))
            .collect(),
    );
    let mut names: Vec<&str> = Vec::new();
    for (_, f) in figures {
        for (n, _) in &f.rows {
            if !names.contains(&n.as_str()) {
                names.push(n);
            }
        }
    }
    for name in names {
        row(
            &format!("{name}, instructions at EL2"),
            figures
                .iter()
                .map(|(_, f)| {
                    cell(
                        f.rows
                            .iter()
                            .find(|(n, _)| n == name)
                            .map(|(_, v)| format!("{v:.0}")),
                    )
                })
                .collect(),
        );
    }
    let bare = figures
        .iter()
        .find(|(h, _)| *h == Host::Bare)
        .and_then(|(_, f)| f.init);
    let bare_load = figures
        .iter()
        .find(|(h, _)| *h == Host::Bare)
        .and_then(|(_, f)| f.module_load);
    for (host, f) in figures.iter().filter(|(h, _)| *h != Host::Bare) {
        if let (Some(init), Some(bare)) = (f.init, bare) {
            out.push_str(&format!(
                "bench: Linux host boot to /init under {}: {} instructions against bare\n",
                host.name(),
                delta(init, bare)
            ));
        }
        if let (Some(load), Some(bare)) = (f.module_load, bare_load) {
            out.push_str(&format!(
                "bench: Linux host reset to module load under {}: {} instructions against bare\n",
                host.name(),
                delta(load, bare)
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONSOLE: &str = "\
[    0.100000] something else
BENCH [    0.805747] Run /init as init process
BENCH [    0.900000] pkvm_rs_bench: reset to module load: 941451000 instructions (CNTVCT 941451000, CNTFRQ 1000000000)
BENCH [    0.900001] pkvm_rs_bench: unknown function ID: 17.000 instructions at EL2 (10000 iterations: 220000 ticks, EL1 loop 50000 ticks)
BENCH [    0.900002] pkvm_rs_bench: share + unshare of one page: refused (x0 0x0, x1 0x1)
BENCH [    0.900003] pkvm_rs_bench: cheapest known call: 314.250 instructions at EL2 (10000 iterations: 1 ticks, EL1 loop 1 ticks)
BENCH DONE
";

    #[test]
    fn parse_reads_init_module_load_and_rows() {
        let f = parse(CONSOLE);
        assert_eq!(f.init, Some(805_747_000));
        assert_eq!(f.module_load, Some(941_451_000));
        assert_eq!(
            f.rows,
            vec![
                ("unknown function ID".to_string(), 17.0),
                ("cheapest known call".to_string(), 314.25)
            ]
        );
        assert_eq!(
            f.refused,
            vec!["share + unshare of one page: refused (x0 0x0, x1 0x1)".to_string()]
        );
    }

    #[test]
    fn table_lines_up_rows_and_compares_with_bare() {
        let ours = parse(CONSOLE);
        let bare = Figures {
            init: Some(800_000_000),
            ..Figures::default()
        };
        let t = table(&[(Host::PkvmRs, ours), (Host::Bare, bare)]);
        assert!(
            t.contains("| boot to /init | 805747000 | 800000000 |"),
            "{t}"
        );
        assert!(
            t.contains("| unknown function ID, instructions at EL2 | 17 | - |"),
            "{t}"
        );
        assert!(
            t.contains("under pkvm-rs: +5747000 (+0.72 %) instructions against bare"),
            "{t}"
        );
    }
}
