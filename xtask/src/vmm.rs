//! A Linux guest in a normal VM, run by the Rust VMM (`vmm/`) inside
//! Debian's Linux host on the real image: the VMM cross-built as a static
//! aarch64 musl binary, the guest's initramfs (busybox and the virtio and
//! ext4 modules of the same kernel package), an ext2 disk image, and the
//! host's `/init` that runs the VMM, checks its exit status and finds the
//! guest's file in the disk image.
//!
//! A run passes when the host's `/init` reports status 0 (VMM exit 0, the
//! guest's file in the disk, every page back with the driver after a VMM
//! killed at three points), the guest reported `GUEST DONE 0`, the machine powered
//! off, and the console (host and guest) holds none of
//! [`linux::BAD_MARKERS`].

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use crate::linux::{self, CpioEntry, Kernel, EXEC, FILE};
use crate::qemu::{mte_supported, QemuRun};
use crate::{deps, image, init_script, workspace_root};

/// The VMM's target: a static binary the busybox host runs as is.
pub(crate) const TARGET: &str = "aarch64-unknown-linux-musl";
/// What the guest writes to its disk and the host looks for.
pub(crate) const MESSAGE: &str = "written by the guest through virtio-blk";
/// The guest's closing line.
pub(crate) const GUEST_DONE: &str = "GUEST DONE ";
/// The guest's modules, in load order (dependencies first), from the same
/// linux-image package as the kernel.
const GUEST_MODULES: [&str; 8] = [
    "drivers/virtio/virtio_mmio",
    "drivers/char/virtio_console",
    "drivers/block/virtio_blk",
    "lib/crc16",
    "fs/mbcache",
    "fs/jbd2/jbd2",
    "crypto/crc32c_generic",
    "fs/ext4/ext4",
];
/// The host's modules for looking into the disk image.
pub(crate) const HOST_MODULES: [&str; 6] = [
    "drivers/block/loop",
    "lib/crc16",
    "fs/mbcache",
    "fs/jbd2/jbd2",
    "crypto/crc32c_generic",
    "fs/ext4/ext4",
];

/// The guest's `/init`: load the modules, print through the virtio
/// console, write a file on the virtio disk and read it back, power off.
const GUEST_INIT: &str = concat!(
    init_script::preamble!(),
    r#"for m in MODULES; do
    insmod /lib/modules/$m.ko || echo "GUEST insmod $m failed"
done
"#,
    init_script::guest_devices!(),
    r#"echo "GUEST hello through the virtio console, on $(grep -c ^processor /proc/cpuinfo) CPUs"
status=0
"#,
    init_script::guest_disk!(),
    init_script::guest_bench!(),
    r#"echo "GUEST DONE $status"
poweroff -f
"#
);

/// The host's `/init`: load the driver, run the VMM and check it ended
/// with 0, find the guest's file in the disk image, check the VMM's
/// refusals, then kill further VMMs at six points (setting up, early and
/// later in the guest's boot, and three random ones) and check that the
/// driver holds no page after each.
const HOST_INIT: &str = concat!(
    init_script::preamble!(),
    r#"echo "LINUXHOST init at $(cut -d' ' -f1 /proc/uptime)s on $(grep -c ^processor /proc/cpuinfo) CPUs"
status=0
insmod /pkvm_rs.ko || status=1
if [ $status = 0 ]; then
    echo "LINUXHOST vmm run --cpus 2 --mem 192"
    start=$(cut -d' ' -f1 /proc/uptime)
    /vmm run --kernel /guest/Image --initrd /guest/initramfs.cpio --disk /guest/disk.img --cpus 2 --mem 192 --cmdline "CMDLINE"
    vmm=$?
    echo "LINUXHOST vmm exited with $vmm after $start..$(cut -d' ' -f1 /proc/uptime)s"
    [ $vmm = 0 ] || status=1
fi
if [ $status = 0 ]; then
    for m in MODULES; do insmod /lib/modules/$m.ko || status=1; done
    mkdir -p /mnt
    if mount -o loop,ro -t ext2 /guest/disk.img /mnt; then
        found=$(cat /mnt/hello.txt)
        echo "LINUXHOST found in the disk image: $found"
        [ "$found" = "MESSAGE" ] || status=1
        umount /mnt
    else
        echo "LINUXHOST cannot mount the disk image"
        status=1
    fi
fi
if [ $status = 0 ]; then
    # Clear refusals: a missing file (1), a usage error (2).
    /vmm --help >/dev/null || status=1
    err=$(/vmm run --kernel /no/such/Image 2>&1)
    e=$?
    echo "LINUXHOST missing kernel: exit $e: $err"
    [ $e = 1 ] && [ "${err#*No such file}" != "$err" ] || status=1
    /vmm run --kernel /guest/Image --cpus 0 2>/dev/null
    [ $? = 2 ] || status=1
fi
# Kill a VMM at several points: while it sets the VM up, early in the
# guest's boot, later in it, and at three random points in its first 3 s
# (printed, so a failure can be replayed). Every page must come back each
# time.
r1=$((RANDOM % 3000)); r2=$((RANDOM % 3000)); r3=$((RANDOM % 3000))
for ms in 100 500 2000 $r1 $r2 $r3; do
    delay=$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))
    [ $status = 0 ] || break
    /vmm run --kernel /guest/Image --initrd /guest/initramfs.cpio --cpus 2 --mem 64 >/dev/null 2>&1 &
    pid=$!
    sleep $delay
    echo "LINUXHOST SIGKILL after ${delay}s: $(/vmm stats)"
    kill -9 $pid
    wait $pid
    # The driver tears the VM down as the last thread exits; allow it a moment.
    for i in 1 2 3 4 5 6 7 8 9 10; do
        after=$(/vmm stats)
        [ "$after" = "pages_allocated 0 pages_pinned 0 pages_leaked 0 vms 0 pages_not_zeroed 0" ] && break
        sleep 0.5
    done
    echo "LINUXHOST after SIGKILL: $after"
    [ "$after" = "pages_allocated 0 pages_pinned 0 pages_leaked 0 vms 0 pages_not_zeroed 0" ] || status=1
done
echo "LINUXHOST DONE $status"
poweroff -f
"#
);

/// The host's `/init` for `cargo xtask bench`: one VMM run of the guest,
/// quiet, with its bench block on.
const BENCH_HOST_INIT: &str = concat!(
    init_script::preamble!(),
    r#"status=0
insmod /pkvm_rs.ko || status=1
if [ $status = 0 ]; then
    /vmm run --kernel /guest/Image --initrd /guest/initramfs.cpio --disk /guest/disk.img --cpus 2 --mem 192 --cmdline "console=ttyS0 panic=-1 quiet guestbench" || status=1
fi
echo "LINUXHOST DONE $status"
poweroff -f
"#
);

/// The guest's kernel command line under test: the UART console, and a
/// panic that ends the VM at once.
const CMDLINE: &str = "console=ttyS0 earlycon=uart8250,mmio,0x9000000 panic=-1";

/// Builds the VMM for the host; returns the binary.
pub fn build_vmm() -> Result<PathBuf, String> {
    let installed = Command::new("rustup")
        .current_dir(workspace_root())
        .args(["target", "list", "--installed"])
        .output()
        .map_err(|e| format!("cannot run rustup: {e}"))?;
    if !String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == TARGET)
    {
        println!("xtask: installing the Rust target {TARGET}: rustup target add {TARGET}");
        let ok = Command::new("rustup")
            .current_dir(workspace_root())
            .args(["target", "add", TARGET])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(format!(
                "`rustup target add {TARGET}` failed; run it by hand"
            ));
        }
    }
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(workspace_root())
        .args(["build", "--release", "-p", "vmm", "--target", TARGET])
        .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER", "rust-lld")
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building the VMM for {TARGET} failed ({status})"));
    }
    Ok(workspace_root()
        .join("target")
        .join(TARGET)
        .join("release")
        .join("vmm"))
}

pub(crate) fn read(p: &Path) -> Result<Vec<u8>, String> {
    fs::read(p).map_err(|e| format!("{}: {e}", p.display()))
}

fn module_dir(k: &Kernel, root: &Path) -> PathBuf {
    root.join("lib/modules")
        .join(format!("{}-arm64", k.abi))
        .join("kernel")
}

/// The short name insmod is given (`fs/jbd2/jbd2` -> `jbd2`).
fn short(m: &str) -> &str {
    m.rsplit('/').next().unwrap_or(m)
}

/// A busybox initramfs with `init` and `modules` (as /lib/modules/NAME.ko)
/// and `extra` files.
pub(crate) fn initramfs(
    k: &Kernel,
    root: &Path,
    init: &str,
    modules: &[&str],
    extra: &[(&str, u32, Vec<u8>)],
) -> Result<Vec<u8>, String> {
    let busybox = ["bin/busybox", "usr/bin/busybox"]
        .iter()
        .map(|p| root.join(p))
        .find(|p| p.is_file())
        .ok_or("no busybox in the unpacked busybox-static")?;
    let busybox = read(&busybox)?;
    let mods = modules
        .iter()
        .map(|m| {
            let data = read(&module_dir(k, root).join(format!("{m}.ko")))?;
            Ok((format!("lib/modules/{}.ko", short(m)), data))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let names: Vec<&str> = modules.iter().map(|m| short(m)).collect();
    let init = init
        .replace("MODULES", &names.join(" "))
        .replace("MESSAGE", MESSAGE)
        .replace("CMDLINE", CMDLINE);
    let mut entries = linux::busybox_root(&busybox, init.as_bytes());
    entries.extend(["lib", "lib/modules", "guest"].map(CpioEntry::dir));
    for (name, data) in &mods {
        entries.push(CpioEntry::file(name, FILE, data));
    }
    for (name, mode, data) in extra {
        entries.push(CpioEntry::file(name, *mode, data));
    }
    Ok(linux::cpio_newc(&entries))
}

/// An empty ext2 file system image of 16 MiB, made with `mke2fs`.
pub(crate) fn disk_image(dir: &Path) -> Result<Vec<u8>, String> {
    let path = dir.join("disk.img");
    let _ = fs::remove_file(&path);
    let out = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext2", "-L", "vmdisk"])
        .arg(&path)
        .arg("16M")
        .output()
        .map_err(|e| format!("cannot run mke2fs (Debian package e2fsprogs): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mke2fs failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    read(&path)
}

/// Everything a run needs.
pub struct Prepared {
    pub(crate) hyp: PathBuf,
    pub(crate) image: PathBuf,
    pub(crate) initramfs: PathBuf,
}

/// Fetches and builds everything: the kernel packages, the driver, the
/// VMM, the guest's initramfs and disk, the host's initramfs.
pub fn prepare(k: &Kernel) -> Result<Prepared, String> {
    prepare_with(k, HOST_INIT, "host-initramfs.cpio")
}

/// [`prepare`] with the host's `/init` script `init`, the initramfs
/// written as `name`.
fn prepare_with(k: &Kernel, init: &str, name: &str) -> Result<Prepared, String> {
    let root = linux::fetch_and_unpack(k)?;
    linux::ensure_cross_compiler()?;
    let module = linux::build_module(k, &root)?;
    let vmm = build_vmm()?;
    let image = root.join(k.image_path);
    let dir = linux::linux_dir().join(k.abi).join("vmm");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let guest = initramfs(k, &root, GUEST_INIT, &GUEST_MODULES, &[])?;
    let extra = [
        ("pkvm_rs.ko", FILE, read(&module)?),
        ("vmm", EXEC, read(&vmm)?),
        ("guest/Image", FILE, read(&image)?),
        ("guest/initramfs.cpio", FILE, guest),
        ("guest/disk.img", FILE, disk_image(&dir)?),
    ];
    let host = initramfs(k, &root, init, &HOST_MODULES, &extra)?;
    let initramfs = dir.join(name);
    fs::write(&initramfs, host).map_err(|e| format!("{}: {e}", initramfs.display()))?;
    Ok(Prepared {
        hyp: image::build_images()?.hyp,
        image,
        initramfs,
    })
}

/// Why a run's console shows a failure, if it does.
pub fn judge(text: &str, timed_out: bool) -> Option<String> {
    if let Some(why) = linux::judge(text, timed_out) {
        return Some(why);
    }
    let guest = text.lines().find_map(|l| {
        l.trim()
            .strip_prefix(GUEST_DONE)
            .map(|s| s.trim().to_string())
    });
    match guest.as_deref() {
        Some("0") => None,
        Some(s) => Some(format!("the guest finished with status {s}")),
        None => Some("the guest never finished".into()),
    }
}

/// Boots the hypervisor, the host, the VMM and the guest on `cpu` with
/// `smp` CPUs; returns why it failed, if it did.
pub fn boot(p: &Prepared, cpu: &str, smp: u32, echo: bool) -> Result<Option<String>, String> {
    let run = QemuRun {
        cpu: cpu.to_string(),
        mte: mte_supported(cpu),
        smmu: true,
        smp,
        kernel: p.hyp.clone(),
        initrd: Some(p.initramfs.clone()),
        loader: vec![(p.image.clone(), linux::HOST_IMAGE_ADDR)],
        extra: Vec::new(),
        timeout: linux::TIMEOUT,
    };
    let start = Instant::now();
    let out = run.run(&deps::qemu_binary(), echo)?;
    let took = start.elapsed();
    if !echo {
        for l in out.text.lines() {
            let l = l.trim_end();
            if l.starts_with("LINUXHOST")
                || l.starts_with("GUEST")
                || l.starts_with("vmm:")
                || linux::BAD_MARKERS.iter().any(|m| l.contains(m))
            {
                println!("{l}");
            }
        }
    }
    println!(
        "xtask: hypervisor, host, VMM and guest on {cpu}, {smp} CPUs: {:.1}s",
        took.as_secs_f64()
    );
    let mut failure = judge(&out.text, out.timed_out);
    if failure.is_none() && !out.status.is_some_and(|s| s.success()) {
        failure = Some(format!("QEMU exited with {:?}", out.status));
    }
    if failure.is_some() && !echo {
        // What the filter above left out: the console's last lines say
        // where a run stopped (the host's boot, the VMM, the guest).
        let lines: Vec<&str> = out.text.lines().collect();
        println!("--- the console's last {} lines ---", lines.len().min(60));
        for l in &lines[lines.len().saturating_sub(60)..] {
            println!("{}", l.trim_end());
        }
    }
    Ok(failure)
}

/// The steps of `cargo xtask test`: the guest on each CPU model.
pub fn tests(configs: &[(&Kernel, &str, u32)]) -> Result<(), String> {
    let mut prepared = None;
    for &(k, cpu, smp) in configs {
        let step = format!(
            "Linux guest in a normal VM ({}, VMM, real image, {cpu}, {smp} CPUs)",
            k.name
        );
        if !crate::test_all::selected(&step) {
            continue;
        }
        if prepared.is_none() {
            println!(
                "==> build: the VMM, the guest's initramfs and disk ({})",
                k.name
            );
            prepared = Some(prepare(k).map_err(|e| format!("Linux guest: {e}"))?);
        }
        let Some(p) = prepared.as_ref() else { continue };
        println!("==> {step}");
        match boot(p, cpu, smp, false) {
            Ok(None) => {}
            Ok(Some(why)) => {
                println!("xtask: {why}");
                return Err(step);
            }
            Err(e) => {
                println!("xtask: {e}");
                return Err(step);
            }
        }
    }
    Ok(())
}

/// What the guest's bench block printed: boot to /init (instructions),
/// then (bytes, instructions) read and written through virtio-blk.
#[derive(Debug, Default, PartialEq)]
pub struct GuestFigures {
    pub init: Option<u64>,
    pub read: Option<(u64, u64)>,
    pub write: Option<(u64, u64)>,
}

/// Reads the `GUEST BENCH` lines (under `-icount shift=0` a nanosecond of
/// the guest's clock is an instruction).
pub fn parse_bench(console: &str) -> GuestFigures {
    let mut f = GuestFigures::default();
    let transfer = |rest: &str| {
        let (sectors, ns) = rest.split_once(" sectors in ")?;
        let ns = ns.trim().strip_suffix(" ns")?.parse().ok()?;
        Some((sectors.trim().parse::<u64>().ok()? * 512, ns))
    };
    for l in console.lines() {
        let Some(rest) = l.trim().strip_prefix("GUEST BENCH ") else {
            continue;
        };
        if let Some(r) = rest.strip_prefix("read ") {
            f.read = transfer(r);
        } else if let Some(r) = rest.strip_prefix("wrote ") {
            f.write = transfer(r);
        } else if rest.contains("Run /init as init process") {
            f.init = rest
                .trim_start_matches('[')
                .split(']')
                .next()
                .and_then(|t| t.trim().parse::<f64>().ok())
                .map(|s| (s * 1e9).round() as u64);
        }
    }
    f
}

/// `cargo xtask bench`: a normal Linux guest's boot to /init and its
/// virtio-blk throughput, the whole stack (hypervisor, Debian 6.1 host with
/// 2 CPUs, the VMM, the guest with 2 vCPUs) under `-icount
/// shift=0,sleep=off -seed 1`.
pub fn bench(cpu: &str) -> Result<(), String> {
    let k = &linux::BOOKWORM;
    println!(
        "==> bench: a normal Linux guest ({}, 2 vCPUs) in the Linux host, -cpu {cpu}, -icount shift=0,sleep=off -seed 1",
        k.name
    );
    let p = prepare_with(k, BENCH_HOST_INIT, "bench-host-initramfs.cpio")?;
    let run = QemuRun {
        cpu: cpu.to_string(),
        mte: mte_supported(cpu),
        smmu: true,
        smp: 2,
        kernel: p.hyp.clone(),
        initrd: Some(p.initramfs.clone()),
        loader: vec![(p.image.clone(), linux::HOST_IMAGE_ADDR)],
        extra: ["-icount", "shift=0,sleep=off", "-seed", "1"]
            .map(String::from)
            .to_vec(),
        timeout: linux::TIMEOUT,
    };
    let out = run.run(&deps::qemu_binary(), false)?;
    if let Some(why) = judge(&out.text, out.timed_out) {
        return Err(why);
    }
    let f = parse_bench(&out.text);
    let (Some(init), Some(read), Some(write)) = (f.init, f.read, f.write) else {
        return Err(format!("the guest printed no complete bench lines: {f:?}"));
    };
    println!("bench: normal Linux guest boot to /init: {init} instructions");
    for (what, (bytes, ns)) in [("read", read), ("write", write)] {
        println!(
            "bench: normal Linux guest virtio-blk {what} of {} KiB: {ns} instructions, {:.1} bytes per 1,000 instructions ({:.1} MiB/s at one instruction per ns)",
            bytes / 1024,
            bytes as f64 * 1000.0 / ns.max(1) as f64,
            bytes as f64 / (1 << 20) as f64 / (ns.max(1) as f64 / 1e9)
        );
    }
    Ok(())
}

/// `cargo xtask run --linux`: the whole stack, console shown.
pub fn run(cpu: &str) -> ExitCode {
    deps::ensure_qemu();
    let p = match prepare(&linux::BOOKWORM) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("xtask: {e}");
            return ExitCode::from(2);
        }
    };
    match boot(&p, cpu, 2, true) {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(why)) => {
            eprintln!("xtask: {why}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judging_the_guest() {
        let ok = "LINUXHOST DONE 0\nGUEST DONE 0\n";
        assert_eq!(judge(ok, false), None);
        assert!(judge("LINUXHOST DONE 0\nGUEST DONE 1\n", false).is_some());
        assert!(judge("LINUXHOST DONE 0\n", false).is_some());
        assert!(judge("GUEST DONE 0\nLINUXHOST DONE 1\n", false).is_some());
        assert!(judge(
            "[ 1.0] WARNING: CPU: 1\nGUEST DONE 0\nLINUXHOST DONE 0\n",
            false
        )
        .is_some());
    }

    #[test]
    fn bench_lines() {
        let f = parse_bench(
            "GUEST BENCH [    1.250000] Run /init as init process\n\
             GUEST BENCH read 32768 sectors in 2000000 ns\n\
             GUEST BENCH wrote 16384 sectors in 4000000 ns\n",
        );
        assert_eq!(f.init, Some(1_250_000_000));
        assert_eq!(f.read, Some((16 << 20, 2_000_000)));
        assert_eq!(f.write, Some((8 << 20, 4_000_000)));
        assert_eq!(
            parse_bench("GUEST BENCH read x sectors in 1 ns"),
            GuestFigures::default()
        );
    }

    #[test]
    fn module_names() {
        assert_eq!(short("fs/jbd2/jbd2"), "jbd2");
        assert_eq!(short("loop"), "loop");
    }
}
