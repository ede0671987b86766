//! The protected-guest kernel: Debian's `linux-source-7.3` from
//! trixie-backports, built unmodified for arm64 with the project's small
//! configuration (`xtask/guest-kernel.config` added to `allnoconfig`), and
//! a boot of it on bare QEMU (no hypervisor) to an initramfs that talks
//! through a virtio console.
//!
//! Everything lives under `target/guest-kernel/<version>/`: `src/` (the
//! unpacked source, never edited), `build/` (kbuild's output, `O=`), the
//! finished `Image`, and `stamp`, which names what made that Image (source
//! package, configuration hash, compiler). A different stamp rebuilds; the
//! same stamp returns the cached Image without running make.
//!
//! The source package is downloaded with the private trixie apt
//! configuration of [`linux`] into the same cache as the host kernel's
//! packages (`target/linux/debs-trixie`); the tarball inside it is
//! unpacked without installing anything.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use crate::linux::{self, Source};
use crate::{deps, init_script, workspace_root};

/// The source package and its pinned version (the same upload as the
/// trixie-backports host kernel, [`linux::TRIXIE`]).
pub const SOURCE_PACKAGE: &str = "linux-source-7.3";
pub const SOURCE_VERSION: &str = "7.3.4-1~bpo13+1";
/// What a step calls this kernel.
pub const VERSION_NAME: &str = "7.3";
/// The tarball inside the package and the directory it unpacks to.
const TARBALL: &str = "./usr/src/linux-source-7.3.tar.xz";
const TREE: &str = "linux-source-7.3";

/// The configuration fragment added to `allnoconfig`.
const FRAGMENT: &str = include_str!("../guest-kernel.config");

/// The cross compiler prefix, and the amd64 tools kbuild needs beyond it:
/// (command, Debian package).
const CROSS: &str = "aarch64-linux-gnu-";
const BUILD_TOOLS: [(&str, &str); 5] = [
    ("make", "make"),
    ("flex", "flex"),
    ("bison", "bison"),
    ("bc", "bc"),
    ("xz", "xz-utils"),
];
/// Parallel jobs for the kernel build (CI has two cores).
const JOBS: &str = "-j2";

/// The busybox of the boot check (the archive's current trixie build).
const BUSYBOX: &str = "busybox-static";
/// A boot that takes longer than this has hung.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// The line `/init` ends with: `GUESTKERNEL DONE <status>`.
const DONE: &str = "GUESTKERNEL DONE ";

/// The initramfs's `/init`: everything it prints goes to the virtio
/// console, hvc0 (`console=hvc0`; QEMU's UART is not connected). QEMU's
/// virtio-serial announces its ports with a control message after the
/// driver probes, so the kernel can open `/dev/console` before hvc0 exists
/// (CI saw it once; two busy loops on the two cores show it about one boot
/// in ten): `/init` waits for `/dev/hvc0` and writes there, not to
/// whatever `/dev/console` became. It replays the whole kernel log (the
/// virtio console starts late, and a warning before it must still fail the
/// boot), then powers off through PSCI.
const INIT: &str = concat!(
    init_script::preamble!(),
    r#"i=0
while [ ! -c /dev/hvc0 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
exec >/dev/hvc0 2>&1
echo "GUESTKERNEL init at $(cut -d' ' -f1 /proc/uptime)s on $(grep -c ^processor /proc/cpuinfo) CPUs, console $(cat /sys/class/tty/console/active)"
echo "GUESTKERNEL $(uname -r) $(uname -v)"
dmesg | sed 's/^/GUESTKERNEL dmesg: /'
status=0
grep -q hvc0 /sys/class/tty/console/active || status=1
echo "GUESTKERNEL DONE $status"
poweroff -f
"#
);

fn out_dir() -> PathBuf {
    workspace_root()
        .join("target")
        .join("guest-kernel")
        .join(SOURCE_VERSION)
}

/// FNV-1a, 64 bits: a stable hash for the stamp (std's hasher may change
/// between Rust releases).
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The `CONFIG_...` lines the fragment asks for: (name, wanted value), the
/// value `None` for `# CONFIG_X is not set`.
fn wanted_options(fragment: &str) -> Vec<(&str, Option<&str>)> {
    fragment
        .lines()
        .map(str::trim)
        .filter_map(|l| {
            if let Some(off) = l
                .strip_prefix("# ")
                .and_then(|r| r.strip_suffix(" is not set"))
            {
                off.starts_with("CONFIG_").then_some((off, None))
            } else if l.starts_with("CONFIG_") {
                l.split_once('=').map(|(n, v)| (n, Some(v)))
            } else {
                None
            }
        })
        .collect()
}

/// The fragment's options that `config` (a finished `.config`) does not
/// have as asked, each with what it has instead.
fn dropped_options(fragment: &str, config: &str) -> Vec<String> {
    let value_of = |name: &str| {
        config.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|r| r.strip_prefix('='))
                .map(str::to_string)
        })
    };
    wanted_options(fragment)
        .into_iter()
        .filter_map(|(name, want)| {
            let have = value_of(name);
            let ok = match want {
                Some(v) => have.as_deref() == Some(v),
                None => have.as_deref().is_none_or(|h| h == "n"),
            };
            (!ok).then(|| {
                format!(
                    "{name}: asked {}, got {}",
                    want.unwrap_or("not set"),
                    have.as_deref().unwrap_or("not set")
                )
            })
        })
        .collect()
}

/// Installs (amd64, with apt-get, as root) whichever build tools are
/// missing; otherwise says what to install.
fn ensure_build_tools() -> Result<(), String> {
    linux::ensure_cross_compiler()?;
    let missing: Vec<&str> = BUILD_TOOLS
        .iter()
        .filter(|(cmd, _)| Command::new(cmd).arg("--version").output().is_err())
        .map(|&(_, pkg)| pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("xtask: missing kernel build tools; installing {missing:?} (amd64)");
    let mut updated = false;
    linux::apt_update(Source::Machine, &mut updated)?;
    linux::run_checked(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .map_err(|e| {
        format!(
            "{e}; install them with: apt-get install {}",
            missing.join(" ")
        )
    })
}

/// The cached .deb of `name` (downloaded with the trixie apt configuration
/// when missing): `spec` is what apt-get downloads, `prefix` the start of
/// the file name.
fn trixie_deb(spec: &str, prefix: &str) -> Result<PathBuf, String> {
    let debs = linux::linux_dir().join("debs-trixie");
    if let Some(f) = linux::cached_deb(&debs, prefix) {
        return Ok(f);
    }
    fs::create_dir_all(&debs).map_err(|e| format!("{}: {e}", debs.display()))?;
    let mut updated = false;
    let mut download = linux::apt_get(Source::Trixie)?;
    download.arg("download").arg(spec).current_dir(&debs);
    if linux::run_checked(&mut download).is_err() {
        // No lists yet, or lists that predate the version.
        linux::apt_update(Source::Trixie, &mut updated)?;
        linux::run_checked(&mut download)?;
    }
    linux::cached_deb(&debs, prefix)
        .ok_or_else(|| format!("apt-get download {spec} left no {prefix}*.deb"))
}

/// Unpacks the source tarball of `deb` into `dir` (once per .deb):
/// `dpkg-deb --fsys-tarfile | tar -xO TARBALL | tar -xJ`, nothing written
/// but the tree.
fn unpack_source(deb: &Path, dir: &Path) -> Result<PathBuf, String> {
    let tree = dir.join(TREE);
    let stamp = dir.join("unpacked");
    let want = format!("{}\n", deb.display());
    if fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        return Ok(tree);
    }
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    println!("xtask: unpacking {} into {}", deb.display(), dir.display());
    let spawn = |cmd: &mut Command| {
        cmd.spawn()
            .map_err(|e| format!("cannot run {}: {e}", crate::process::describe(cmd)))
    };
    let mut fsys = spawn(
        Command::new("dpkg-deb")
            .arg("--fsys-tarfile")
            .arg(deb)
            .stdout(Stdio::piped()),
    )?;
    let mut member = spawn(
        Command::new("tar")
            .args(["-xO", TARBALL])
            .stdin(fsys.stdout.take().ok_or("no pipe from dpkg-deb")?)
            .stdout(Stdio::piped()),
    )?;
    let mut tree_tar = spawn(
        Command::new("nice")
            .args(["-n", "10", "tar", "-xJ", "-C"])
            .arg(dir)
            .stdin(member.stdout.take().ok_or("no pipe from tar")?),
    )?;
    let mut failed = Vec::new();
    for (what, child) in [
        ("dpkg-deb", &mut fsys),
        ("tar -xO", &mut member),
        ("tar -xJ", &mut tree_tar),
    ] {
        match child.wait() {
            Ok(s) if s.success() => {}
            Ok(s) => failed.push(format!("{what} exited with {s}")),
            Err(e) => failed.push(format!("{what}: {e}")),
        }
    }
    if !failed.is_empty() || !tree.join("Makefile").is_file() {
        return Err(format!(
            "unpacking {}: {}",
            deb.display(),
            if failed.is_empty() {
                format!("no {TREE}/Makefile")
            } else {
                failed.join("; ")
            }
        ));
    }
    fs::write(&stamp, want).map_err(|e| format!("{}: {e}", stamp.display()))?;
    Ok(tree)
}

/// The cross compiler's version line (part of the stamp).
fn compiler_version() -> Result<String, String> {
    let out = Command::new(format!("{CROSS}gcc"))
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {CROSS}gcc: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// `make` in the unpacked tree with the build directory and the cross
/// compiler, niced (CI shares two cores).
fn make(tree: &Path, build: &Path) -> Command {
    let mut cmd = Command::new("nice");
    cmd.args(["-n", "10", "make", "-s", "-C"])
        .arg(tree)
        .arg(format!("O={}", build.display()))
        .args(["ARCH=arm64", &format!("CROSS_COMPILE={CROSS}")]);
    cmd
}

/// Configures and builds the kernel in `build` from `tree`; returns the
/// Image kbuild wrote.
fn configure_and_build(tree: &Path, build: &Path, fragment_file: &Path) -> Result<PathBuf, String> {
    fs::create_dir_all(build).map_err(|e| format!("{}: {e}", build.display()))?;
    linux::run_checked(make(tree, build).arg("allnoconfig"))?;
    let config = build.join(".config");
    linux::run_checked(
        Command::new(tree.join("scripts/kconfig/merge_config.sh"))
            .current_dir(tree)
            .env("KCONFIG_CONFIG", &config)
            .env("ARCH", "arm64")
            .env("CROSS_COMPILE", CROSS)
            .arg("-m")
            .arg("-O")
            .arg(build)
            .arg(&config)
            .arg(fragment_file)
            .stdout(Stdio::null()),
    )?;
    linux::run_checked(make(tree, build).arg("olddefconfig"))?;
    let text = fs::read_to_string(&config).map_err(|e| format!("{}: {e}", config.display()))?;
    let dropped = dropped_options(FRAGMENT, &text);
    if !dropped.is_empty() {
        return Err(format!(
            "kconfig dropped or changed options of xtask/guest-kernel.config \
             (a missing dependency?):\n  {}",
            dropped.join("\n  ")
        ));
    }
    linux::run_checked(make(tree, build).args([JOBS, "Image"]))
        .map_err(|e| format!("building the guest kernel: {e}"))?;
    Ok(build.join("arch/arm64/boot/Image"))
}

/// Builds the guest kernel if its stamp is not current, and returns the
/// path of its arm64 `Image`. For other xtask steps (the protected-guest
/// boots on the hypervisor, xtask/src/pvm.rs).
pub fn build() -> Result<PathBuf, String> {
    build_timed().map(|(image, _)| image)
}

/// [`build`], also saying how long a build took (`None`: cached).
fn build_timed() -> Result<(PathBuf, Option<Duration>), String> {
    let dir = out_dir();
    let image = dir.join("Image");
    let stamp_file = dir.join("stamp");
    ensure_build_tools()?;
    let deb = trixie_deb(
        &format!("{SOURCE_PACKAGE}={SOURCE_VERSION}"),
        &format!("{SOURCE_PACKAGE}_{SOURCE_VERSION}_"),
    )?;
    let stamp = format!(
        "source {}\nconfig fnv1a {:016x}\ncompiler {}\n",
        deb.file_name().unwrap_or_default().to_string_lossy(),
        fnv1a(FRAGMENT.as_bytes()),
        compiler_version()?,
    );
    if image.is_file() && fs::read_to_string(&stamp_file).ok().as_deref() == Some(stamp.as_str()) {
        return Ok((image, None));
    }
    let start = Instant::now();
    let _ = fs::remove_file(&stamp_file);
    let tree = unpack_source(&deb, &dir.join("src"))?;
    // The fragment as compiled into xtask, so the stamp's hash is of what
    // was merged.
    let fragment_file = dir.join("guest-kernel.config");
    fs::write(&fragment_file, FRAGMENT).map_err(|e| format!("{}: {e}", fragment_file.display()))?;
    let built = configure_and_build(&tree, &dir.join("build"), &fragment_file)?;
    fs::copy(&built, &image).map_err(|e| format!("{}: {e}", built.display()))?;
    fs::write(&stamp_file, stamp).map_err(|e| format!("{}: {e}", stamp_file.display()))?;
    Ok((image, Some(start.elapsed())))
}

/// The initramfs of the boot check: busybox and [`INIT`]; returns its path.
fn initramfs() -> Result<PathBuf, String> {
    let deb = trixie_deb(&format!("{BUSYBOX}:arm64"), &format!("{BUSYBOX}_"))?;
    let root = out_dir().join("busybox");
    let _ = fs::remove_dir_all(&root);
    linux::run_checked(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    let path = root.join("usr/bin/busybox");
    let busybox = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let entries = linux::busybox_root(&busybox, INIT.as_bytes());
    let out = out_dir().join("initramfs.cpio");
    fs::write(&out, linux::cpio_newc(&entries)).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(out)
}

/// QEMU's arguments for the bare boot: `virt` without EL2 (PSCI by HVC,
/// as a guest sees it), GICv3, the console on a virtio-serial port over
/// virtio-mmio, the UART unconnected.
fn qemu_args(image: &Path, initrd: &Path) -> Vec<String> {
    let mut args: Vec<String> = [
        "-machine",
        "virt,gic-version=3",
        "-cpu",
        "max,pauth-impdef=on",
        "-smp",
        "2",
        "-m",
        "256M",
        "-nographic",
        "-nic",
        "none",
        "-monitor",
        "none",
        "-serial",
        "none",
        "-no-reboot",
        "-chardev",
        "stdio,id=con,signal=off",
        "-device",
        "virtio-serial-device",
        "-device",
        "virtconsole,chardev=con",
        "-append",
        "console=hvc0 panic=-1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push("-kernel".into());
    args.push(image.display().to_string());
    args.push("-initrd".into());
    args.push(initrd.display().to_string());
    args
}

/// Why the boot's console shows a failure, if it does.
fn judge(text: &str, timed_out: bool) -> Option<String> {
    if let Some(l) = text
        .lines()
        .find(|l| linux::BAD_MARKERS.iter().any(|m| l.contains(m)))
    {
        return Some(format!("the console shows `{}`", l.trim()));
    }
    if timed_out {
        return Some(format!("no power-off within {}s", BOOT_TIMEOUT.as_secs()));
    }
    let status = text
        .lines()
        .find_map(|l| l.trim().strip_prefix(DONE).map(|s| s.trim().to_string()));
    match status.as_deref() {
        None => Some("/init never finished (nothing on the virtio console?)".into()),
        Some("0") => None,
        Some(s) => Some(format!(
            "/init finished with status {s} (console not hvc0?)"
        )),
    }
}

/// Boots `image` on bare QEMU; returns the console and how long it took,
/// or why it failed.
fn boot(image: &Path) -> Result<(String, Duration), String> {
    let initrd = initramfs()?;
    let qemu = deps::qemu_binary();
    let mut cmd = Command::new(&qemu);
    cmd.args(qemu_args(image, &initrd))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    println!("xtask: {}", crate::process::describe(&cmd));
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", qemu.display()))?;
    let mut stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = stdout.read_to_end(&mut all);
        String::from_utf8_lossy(&all).replace("\r\n", "\n")
    });
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(s);
        }
        if start.elapsed() > BOOT_TIMEOUT {
            timed_out = true;
            let _ = child.kill();
            break child.wait().ok();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = start.elapsed();
    let text = reader.join().unwrap_or_default();
    let failure = judge(&text, timed_out).or_else(|| {
        (!status.is_some_and(|s| s.success())).then(|| format!("QEMU exited with {status:?}"))
    });
    match failure {
        None => Ok((text, took)),
        Some(why) => Err(format!("{why}\n--- console ---\n{text}")),
    }
}

/// The step of `cargo xtask test`: build (or reuse) the guest kernel and
/// boot it on bare QEMU.
pub fn test() -> Result<(), String> {
    let step = "guest kernel (bare QEMU)";
    if !crate::test_all::selected(step) {
        return Ok(());
    }
    println!("==> build: guest kernel (Debian {SOURCE_PACKAGE} {SOURCE_VERSION})");
    let (image, took) = build_timed().map_err(|e| {
        eprintln!("xtask: {e}");
        step.to_string()
    })?;
    if let Some(t) = took {
        println!("xtask: guest kernel built in {:.0}s", t.as_secs_f64());
    }
    println!("==> {step}");
    match boot(&image) {
        Ok((text, took)) => {
            print_lines(&text);
            println!("boot took {:.1}s", took.as_secs_f64());
            Ok(())
        }
        Err(e) => {
            eprintln!("xtask: {e}");
            Err(step.into())
        }
    }
}

/// Kernel log lines worth showing: what the kernel found of a pKVM
/// hypervisor (on bare QEMU: none), of PSCI/SMCCC, swiotlb and virtio.
const SHOWN: [&str; 8] = [
    "kvm",
    "pkvm",
    "smccc",
    "psci",
    "swiotlb",
    "restricted",
    "virtio",
    "hvc",
];

/// `/init`'s own lines, and the kernel log lines of [`SHOWN`].
fn print_lines(text: &str) {
    for l in text.lines() {
        let shown = match l.strip_prefix("GUESTKERNEL dmesg: ") {
            Some(log) => {
                let log = log.to_ascii_lowercase();
                SHOWN.iter().any(|k| log.contains(k))
            }
            None => l.starts_with("GUESTKERNEL"),
        };
        if shown {
            println!("{l}");
        }
    }
}

/// `cargo xtask guest-kernel [--boot]`.
pub fn run(boot_it: bool) -> ExitCode {
    let (image, took) = match build_timed() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("xtask: {e}");
            return ExitCode::FAILURE;
        }
    };
    match took {
        Some(t) => println!("xtask: guest kernel built in {:.0}s", t.as_secs_f64()),
        None => println!("xtask: guest kernel up to date (cached)"),
    }
    println!("{}", image.display());
    if !boot_it {
        return ExitCode::SUCCESS;
    }
    deps::ensure_qemu();
    match boot(&image) {
        Ok((text, took)) => {
            print!("{text}");
            println!(
                "xtask: guest kernel booted on bare QEMU in {:.1}s",
                took.as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fragment_parses_and_asks_for_the_guest_options() {
        let wanted = wanted_options(FRAGMENT);
        for name in [
            "CONFIG_ARM_PKVM_GUEST",
            "CONFIG_DMA_RESTRICTED_POOL",
            "CONFIG_VIRTIO_MMIO",
            "CONFIG_VIRTIO_CONSOLE",
            "CONFIG_VIRTIO_BLK",
        ] {
            assert!(wanted.contains(&(name, Some("y"))), "{name}");
        }
        assert!(wanted.contains(&("CONFIG_MODULES", None)));
    }

    #[test]
    fn dropped_options_are_found() {
        let fragment = "# c\nCONFIG_A=y\nCONFIG_B=8\n# CONFIG_C is not set\nCONFIG_D=y\n";
        let config = "CONFIG_A=y\nCONFIG_B=4\nCONFIG_C=y\n# CONFIG_D is not set\nCONFIG_AB=y\n";
        assert_eq!(
            dropped_options(fragment, config),
            [
                "CONFIG_B: asked 8, got 4",
                "CONFIG_C: asked not set, got y",
                "CONFIG_D: asked y, got not set",
            ]
        );
        assert!(dropped_options(fragment, "CONFIG_A=y\nCONFIG_B=8\nCONFIG_D=y\n").is_empty());
    }

    #[test]
    fn the_stamp_hash_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn judging_the_boot() {
        let ok = "GUESTKERNEL init\nGUESTKERNEL DONE 0\n";
        assert_eq!(judge(ok, false), None);
        assert!(judge(ok, true).is_some());
        assert!(judge("GUESTKERNEL DONE 1\n", false).is_some());
        assert!(judge("", false).is_some());
        assert!(judge(&format!("Kernel panic - x\n{ok}"), false).is_some());
    }
}
