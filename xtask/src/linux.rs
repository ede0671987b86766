//! Debian's Linux kernel as the host on the real image: fetching and caching
//! the kernel, its headers and busybox from the Debian archive, building the
//! host driver (`driver/`) and its test program (`tests/driver-test/`)
//! against exactly that kernel, packing them into an initramfs, and booting
//! it on the hypervisor in QEMU.
//!
//! Packages come from `apt-get download` and are unpacked with `dpkg-deb
//! -x` under `target/linux/`; no arm64 package is ever installed (that
//! would replace the machine's own compiler). The amd64 cross compiler
//! `gcc-aarch64-linux-gnu` is installed with apt-get when missing.
//!
//! A boot passes when the initramfs's `/init` ran the driver test to its
//! closing line, printed [`DONE`] with status 0, the machine powered off
//! through PSCI, and the console holds none of [`BAD_MARKERS`].

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use crate::process::{self, Counts};
use crate::qemu::{mte_supported, QemuRun};
use crate::{deps, image, init_script, workspace_root};

/// Where a kernel's packages come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The machine's own apt configuration (bookworm and its security
    /// updates), with the arm64 architecture added.
    Machine,
    /// A private apt configuration under `target/linux/apt-trixie` (its
    /// own sources, lists and cache): trixie and trixie-backports. Nothing
    /// of the machine's apt changes.
    Trixie,
}

/// One Debian kernel build: the packages that make it, pinned to one
/// version of the archive.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    /// The ABI name in package names: `linux-headers-<abi>-arm64`.
    pub abi: &'static str,
    /// The Debian package version of the image, headers and kbuild.
    pub version: &'static str,
    /// The `linux-kbuild-<kbuild>` package with the amd64 build tools.
    pub kbuild: &'static str,
    /// The package holding the Image: `<binary>-<abi>-arm64`.
    pub binary: &'static str,
    /// The Image inside the unpacked packages.
    pub image_path: &'static str,
    /// Where the packages come from.
    pub source: Source,
    /// Variables given to kbuild on its command line (they override what
    /// the headers' configuration says).
    pub make_overrides: &'static [&'static str],
    /// What a step calls it.
    pub name: &'static str,
}

/// Bookworm's 6.1 (bookworm-security's current build when pinned).
pub const BOOKWORM: Kernel = Kernel {
    abi: "6.1.0-57",
    version: "6.1.192-3",
    kbuild: "6.1",
    binary: "linux-image",
    image_path: "boot/vmlinuz-6.1.0-57-arm64",
    source: Source::Machine,
    make_overrides: &[],
    name: "Debian 6.1",
};

/// Trixie-backports' 7.3. Its kbuild tools need trixie's C library, which
/// is unpacked beside them ([`wrap_kbuild_tools`]). Its headers name
/// `gcc-14`, which bookworm has no cross compiler of: bookworm's gcc-12
/// builds the module, without the one flag gcc-12 lacks
/// (`-fmin-function-alignment`; kbuild then uses `-falign-functions` of
/// the same value), without BTF (no pahole here) and without ftrace patch
/// sites (their call-ops layout needs gcc-14's alignment; see
/// `driver/Kbuild`).
pub const TRIXIE: Kernel = Kernel {
    abi: "7.3.4+deb13",
    version: "7.3.4-1~bpo13+1",
    kbuild: "7.3.4+deb13",
    binary: "linux-binary",
    image_path: "usr/lib/modules/7.3.4+deb13-arm64/vmlinuz",
    source: Source::Trixie,
    make_overrides: &[
        "CC=aarch64-linux-gnu-gcc-12",
        "CONFIG_CC_HAS_MIN_FUNCTION_ALIGNMENT=",
        "CONFIG_DEBUG_INFO_BTF_MODULES=",
        "PKVM_RS_NO_FTRACE=1",
    ],
    name: "Debian 7.3",
};

/// The private apt configuration of [`Source::Trixie`].
const TRIXIE_SOURCES: &str = "\
deb [arch=amd64,arm64] http://deb.debian.org/debian trixie main
deb [arch=amd64,arm64] http://deb.debian.org/debian trixie-backports main
";

/// Where the host kernel is loaded (the manifest's `host-image`).
pub(crate) const HOST_IMAGE_ADDR: u64 = 0x4400_0000;
/// A boot that takes longer than this has hung.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(600);
/// The line `/init` ends with: `LINUXHOST DONE <status>`.
const DONE: &str = "LINUXHOST DONE ";
/// Console text that fails a boot whatever else it printed.
pub const BAD_MARKERS: [&str; 7] = [
    "Oops",
    "WARNING:",
    "SError",
    "Internal error",
    "BUG:",
    "Call trace",
    "Kernel panic",
];
/// The busybox package (its version is whatever the archive has).
const BUSYBOX: &str = "busybox-static";
/// The cross compiler for the module and the test program.
pub(crate) const CROSS: &str = "aarch64-linux-gnu-";
const CROSS_PACKAGE: &str = "gcc-aarch64-linux-gnu";
/// The C library for the cross compiler (amd64 too, under
/// /usr/aarch64-linux-gnu): only a recommendation of the compiler, so
/// `--no-install-recommends` leaves it out, and the static test program
/// needs it.
const CROSS_LIBC_PACKAGE: &str = "libc6-dev-arm64-cross";
/// A header of that C library.
const CROSS_LIBC_HEADER: &str = "/usr/aarch64-linux-gnu/include/stdio.h";

pub(crate) fn linux_dir() -> PathBuf {
    workspace_root().join("target").join("linux")
}

/// The Debian packages a kernel needs: (name with architecture, version or
/// None for the archive's current one, file name prefix of the cached .deb).
fn packages(k: &Kernel) -> Vec<(String, Option<&'static str>, String)> {
    let pinned = |name: String, arch: &str| {
        let prefix = format!("{name}_{}_", k.version);
        (format!("{name}:{arch}"), Some(k.version), prefix)
    };
    let mut list = vec![
        pinned(format!("{}-{}-arm64", k.binary, k.abi), "arm64"),
        pinned(format!("linux-headers-{}-arm64", k.abi), "arm64"),
        pinned(format!("linux-headers-{}-common", k.abi), "all"),
        pinned(format!("linux-kbuild-{}", k.kbuild), "amd64"),
        (format!("{BUSYBOX}:arm64"), None, format!("{BUSYBOX}_")),
    ];
    if k.source == Source::Trixie {
        // The C library trixie's kbuild tools were linked against.
        list.push(("libc6:amd64".into(), None, "libc6_".into()));
    }
    list
}

/// The cached .deb whose name starts with `prefix`, if any.
pub(crate) fn cached_deb(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".deb"))
        })
        .collect();
    found.sort();
    found.pop()
}

pub(crate) fn run_checked(cmd: &mut Command) -> Result<(), String> {
    println!("xtask: {}", process::describe(cmd));
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("{} exited with {s}", process::describe(cmd))),
        Err(e) => Err(format!("cannot run {}: {e}", process::describe(cmd))),
    }
}

/// Makes sure dpkg knows the arm64 architecture (so apt-get can download
/// arm64 packages); adds it and refreshes the package lists when not.
fn ensure_arm64_arch(updated: &mut bool) -> Result<(), String> {
    let out = Command::new("dpkg")
        .arg("--print-foreign-architectures")
        .output()
        .map_err(|e| format!("cannot run dpkg: {e}"))?;
    if !String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == "arm64")
    {
        run_checked(Command::new("dpkg").args(["--add-architecture", "arm64"]))?;
        apt_update(Source::Machine, updated)?;
    }
    Ok(())
}

/// `apt-get` for `source`: the machine's, or the private one of
/// [`Source::Trixie`] (written here on first use).
pub(crate) fn apt_get(source: Source) -> Result<Command, String> {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    if source == Source::Trixie {
        let dir = linux_dir().join("apt-trixie");
        for sub in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(sub)).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let list = dir.join("sources.list");
        fs::write(&list, TRIXIE_SOURCES).map_err(|e| format!("{}: {e}", list.display()))?;
        let opt = |name: &str, value: &Path| format!("{name}={}", value.display());
        cmd.arg("-o")
            .arg(opt("Dir::Etc::SourceList", &list))
            .arg("-o")
            .arg(opt("Dir::Etc::SourceParts", &dir.join("none")))
            .arg("-o")
            .arg(opt("Dir::State::Lists", &dir.join("lists")))
            .arg("-o")
            .arg(opt("Dir::Cache", &dir.join("cache")))
            .args(["-o", "APT::Architectures::=amd64"])
            .args(["-o", "APT::Architectures::=arm64"]);
    }
    Ok(cmd)
}

pub(crate) fn apt_update(source: Source, updated: &mut bool) -> Result<(), String> {
    if !*updated {
        run_checked(apt_get(source)?.args(["update", "-q"]))?;
        *updated = true;
    }
    Ok(())
}

/// Downloads what is not cached yet, unpacks everything into
/// `target/linux/<abi>/root` (once), and returns that directory.
pub(crate) fn fetch_and_unpack(k: &Kernel) -> Result<PathBuf, String> {
    let debs = linux_dir().join(match k.source {
        Source::Machine => "debs",
        Source::Trixie => "debs-trixie",
    });
    fs::create_dir_all(&debs).map_err(|e| format!("{}: {e}", debs.display()))?;
    let mut updated = false;
    let mut files = Vec::new();
    for (name, version, prefix) in packages(k) {
        if let Some(f) = cached_deb(&debs, &prefix) {
            files.push(f);
            continue;
        }
        if k.source == Source::Machine {
            ensure_arm64_arch(&mut updated)?;
        } else {
            apt_update(k.source, &mut updated)?;
        }
        let spec = match version {
            Some(v) => format!("{name}={v}"),
            None => name.clone(),
        };
        let mut download = apt_get(k.source)?;
        download.arg("download").arg(&spec).current_dir(&debs);
        if run_checked(&mut download).is_err() {
            // An old package list may not know the version yet.
            apt_update(k.source, &mut updated)?;
            run_checked(&mut download)?;
        }
        files.push(
            cached_deb(&debs, &prefix)
                .ok_or_else(|| format!("apt-get download {spec} left no {prefix}*.deb"))?,
        );
    }
    let root = linux_dir().join(k.abi).join("root");
    let stamp = linux_dir().join(k.abi).join("unpacked");
    let want: String = files.iter().map(|f| format!("{}\n", f.display())).collect();
    if fs::read_to_string(&stamp).ok().as_deref() != Some(want.as_str()) {
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
        for f in &files {
            run_checked(Command::new("dpkg-deb").arg("-x").arg(f).arg(&root))?;
        }
        fix_headers(k, &root)?;
        if k.source == Source::Trixie {
            wrap_kbuild_tools(k, &root)?;
        }
        fs::write(&stamp, want).map_err(|e| format!("{}: {e}", stamp.display()))?;
    }
    Ok(root)
}

/// The arm64 headers' Makefile names the common headers (and, from 6.x on,
/// its own output directory) by their installed paths, `/usr/src/...`:
/// point them into the unpacked tree (once, right after unpacking). (The
/// `scripts` and `tools` links are relative and already land in the
/// unpacked kbuild.)
fn fix_headers(k: &Kernel, root: &Path) -> Result<(), String> {
    let makefile = root
        .join("usr/src")
        .join(format!("linux-headers-{}-arm64", k.abi))
        .join("Makefile");
    let text = fs::read_to_string(&makefile).map_err(|e| format!("{}: {e}", makefile.display()))?;
    let fixed = text.replace("/usr/src/", &format!("{}/usr/src/", root.display()));
    fs::write(&makefile, fixed).map_err(|e| format!("{}: {e}", makefile.display()))
}

/// Trixie's kbuild tools (fixdep, modpost, ...) need a newer C library
/// than bookworm's: each becomes `<tool>.bin` behind a shell script that
/// runs it with trixie's dynamic loader and library, unpacked in `root`.
fn wrap_kbuild_tools(k: &Kernel, root: &Path) -> Result<(), String> {
    let libdir = root.join("usr/lib/x86_64-linux-gnu");
    let loader = libdir.join("ld-linux-x86-64.so.2");
    let kbuild = root
        .join("usr/lib")
        .join(format!("linux-kbuild-{}", k.kbuild));
    let mut dirs = vec![kbuild];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let path = entry.map_err(|e| e.to_string())?.path();
            let meta = fs::symlink_metadata(&path).map_err(|e| e.to_string())?;
            if meta.is_dir() {
                dirs.push(path);
                continue;
            }
            use std::os::unix::fs::PermissionsExt;
            let exec = meta.is_file() && meta.permissions().mode() & 0o111 != 0;
            let elf = exec
                && fs::read(&path)
                    .map(|d| d.starts_with(b"\x7fELF"))
                    .unwrap_or(false);
            if !elf {
                continue;
            }
            let mut real = path.clone().into_os_string();
            real.push(".bin");
            let real = PathBuf::from(real);
            fs::rename(&path, &real).map_err(|e| format!("{}: {e}", path.display()))?;
            let script = format!(
                "#!/bin/sh\nexec '{}' --library-path '{}' --argv0 \"$0\" '{}' \"$@\"\n",
                loader.display(),
                libdir.display(),
                real.display()
            );
            fs::write(&path, script).map_err(|e| format!("{}: {e}", path.display()))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    Ok(())
}

/// Makes sure the aarch64 cross compiler and its C library (amd64
/// packages) are installed.
pub(crate) fn ensure_cross_compiler() -> Result<(), String> {
    let gcc = format!("{CROSS}gcc");
    let mut missing = Vec::new();
    if Command::new(&gcc).arg("--version").output().is_err() {
        missing.push(CROSS_PACKAGE);
    }
    if !Path::new(CROSS_LIBC_HEADER).exists() {
        missing.push(CROSS_LIBC_PACKAGE);
    }
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    println!("xtask: installing {list} (amd64): the cross compiler for the driver and its test");
    let mut updated = false;
    apt_update(Source::Machine, &mut updated)?;
    run_checked(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .map_err(|e| format!("{e}; install them with: apt-get install {list}"))
}

/// Copies `from` into `to` recursively, rewriting only files whose contents
/// changed (so kbuild's timestamps stay meaningful).
pub(crate) fn sync_dir(from: &Path, to: &Path) -> Result<(), String> {
    fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
    for entry in fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))? {
        let entry = entry.map_err(|e| e.to_string())?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        if src.is_dir() {
            sync_dir(&src, &dst)?;
        } else {
            let data = fs::read(&src).map_err(|e| format!("{}: {e}", src.display()))?;
            if fs::read(&dst).ok().as_deref() != Some(data.as_slice()) {
                fs::write(&dst, data).map_err(|e| format!("{}: {e}", dst.display()))?;
            }
        }
    }
    Ok(())
}

/// Builds `driver/` against the unpacked headers; returns the .ko.
pub(crate) fn build_module(k: &Kernel, root: &Path) -> Result<PathBuf, String> {
    let headers = root
        .join("usr/src")
        .join(format!("linux-headers-{}-arm64", k.abi));
    let build = linux_dir().join(k.abi).join("driver");
    sync_dir(&workspace_root().join("driver"), &build)?;
    let mut make = Command::new("nice");
    make.args(["-n", "10", "make", "-s", "-C"])
        .arg(&headers)
        .arg(format!("M={}", build.display()))
        .args(["ARCH=arm64", &format!("CROSS_COMPILE={CROSS}")])
        .args(k.make_overrides)
        .arg("modules");
    run_checked(&mut make).map_err(|e| format!("building the driver: {e}"))?;
    Ok(build.join("pkvm_rs.ko"))
}

/// Builds the static driver test program; returns it.
fn build_driver_test(k: &Kernel) -> Result<PathBuf, String> {
    let src = workspace_root().join("tests/driver-test/driver_test.c");
    let out = linux_dir().join(k.abi).join("driver-test");
    let mut gcc = Command::new("nice");
    gcc.args(["-n", "10", &format!("{CROSS}gcc")])
        .args([
            "-static", "-O2", "-g", "-Wall", "-Wextra", "-Werror", "-pthread",
        ])
        .arg("-I")
        .arg(workspace_root().join("driver/include"))
        .arg("-o")
        .arg(&out)
        .arg(&src);
    run_checked(&mut gcc).map_err(|e| format!("building the driver test: {e}"))?;
    Ok(out)
}

/// One entry of a newc ("070701") cpio archive.
pub(crate) struct CpioEntry<'a> {
    pub(crate) name: &'a str,
    pub(crate) mode: u32,
    pub(crate) rdev: (u32, u32),
    pub(crate) data: &'a [u8],
}

impl<'a> CpioEntry<'a> {
    /// A directory.
    pub(crate) fn dir(name: &'a str) -> CpioEntry<'a> {
        CpioEntry {
            name,
            mode: DIR,
            rdev: (0, 0),
            data: &[],
        }
    }

    /// A regular file with `mode` ([`EXEC`] or [`FILE`]).
    pub(crate) fn file(name: &'a str, mode: u32, data: &'a [u8]) -> CpioEntry<'a> {
        CpioEntry {
            name,
            mode,
            rdev: (0, 0),
            data,
        }
    }
}

/// What every busybox initramfs of the project starts with: `/bin`,
/// `/dev`, `/proc`, `/sys`, `/tmp`, `/dev/console`, `/bin/busybox` and the
/// `/init` script. Callers add their own files after it.
pub(crate) fn busybox_root<'a>(busybox: &'a [u8], init: &'a [u8]) -> Vec<CpioEntry<'a>> {
    let mut entries: Vec<CpioEntry> = ["bin", "dev", "proc", "sys", "tmp"]
        .into_iter()
        .map(CpioEntry::dir)
        .collect();
    entries.push(CpioEntry {
        name: "dev/console",
        mode: CHAR_DEV,
        rdev: (5, 1),
        data: &[],
    });
    entries.push(CpioEntry::file("bin/busybox", EXEC, busybox));
    entries.push(CpioEntry::file("init", EXEC, init));
    entries
}

/// A newc cpio archive of `entries`, as the kernel unpacks an initramfs.
pub(crate) fn cpio_newc(entries: &[CpioEntry]) -> Vec<u8> {
    fn pad4(out: &mut Vec<u8>) {
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
    fn header(out: &mut Vec<u8>, ino: u32, e: &CpioEntry) {
        let fields = [
            ino,
            e.mode,
            0, // uid
            0, // gid
            1, // nlink
            0, // mtime
            e.data.len() as u32,
            0, // dev major
            0, // dev minor
            e.rdev.0,
            e.rdev.1,
            e.name.len() as u32 + 1,
            0, // check
        ];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        out.extend_from_slice(e.name.as_bytes());
        out.push(0);
        pad4(out);
        out.extend_from_slice(e.data);
        pad4(out);
    }
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        header(&mut out, i as u32 + 1, e);
    }
    let trailer = CpioEntry {
        name: "TRAILER!!!",
        mode: 0,
        rdev: (0, 0),
        data: &[],
    };
    header(&mut out, 0, &trailer);
    out
}

pub(crate) const DIR: u32 = 0o040_755;
pub(crate) const EXEC: u32 = 0o100_755;
pub(crate) const FILE: u32 = 0o100_644;
pub(crate) const CHAR_DEV: u32 = 0o020_600;

/// The initramfs's `/init`: mount the pseudo file systems, load the
/// driver, run its tests, report, power off through PSCI.
const INIT: &str = concat!(
    init_script::preamble!(),
    r#"echo "LINUXHOST init at $(cut -d' ' -f1 /proc/uptime)s on $(grep -c ^processor /proc/cpuinfo) CPUs"
status=0
if insmod /pkvm_rs.ko; then
    /driver-test || status=$?
    rmmod pkvm_rs || status=1
else
    echo "LINUXHOST insmod failed"
    status=1
fi
echo "LINUXHOST DONE $status"
poweroff -f
"#
);

/// Writes the initramfs for one kernel; returns its path.
fn initramfs(k: &Kernel, root: &Path, module: &Path, test: &Path) -> Result<PathBuf, String> {
    let read = |p: &Path| fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    // bookworm's package has /bin/busybox, trixie's (merged /usr)
    // /usr/bin/busybox.
    let busybox = ["bin/busybox", "usr/bin/busybox"]
        .iter()
        .map(|p| root.join(p))
        .find(|p| p.is_file())
        .ok_or("no busybox in the unpacked busybox-static")?;
    let busybox = read(&busybox)?;
    let module = read(module)?;
    let test = read(test)?;
    let mut entries = busybox_root(&busybox, INIT.as_bytes());
    entries.push(CpioEntry::file("pkvm_rs.ko", FILE, &module));
    entries.push(CpioEntry::file("driver-test", EXEC, &test));
    let path = linux_dir().join(k.abi).join("initramfs.cpio");
    fs::write(&path, cpio_newc(&entries)).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// Everything one kernel's boots need.
pub struct Prepared {
    kernel: Kernel,
    hyp: PathBuf,
    image: PathBuf,
    initramfs: PathBuf,
}

/// Fetches, unpacks and builds everything for `k`.
pub fn prepare(k: &Kernel) -> Result<Prepared, String> {
    let root = fetch_and_unpack(k)?;
    ensure_cross_compiler()?;
    let module = build_module(k, &root)?;
    let test = build_driver_test(k)?;
    let initramfs = initramfs(k, &root, &module, &test)?;
    let images = image::build_images()?;
    Ok(Prepared {
        kernel: *k,
        hyp: images.hyp,
        image: root.join(k.image_path),
        initramfs,
    })
}

/// What one boot showed.
pub struct Boot {
    /// The console, `\r\n` made `\n`.
    pub text: String,
    /// How long QEMU ran.
    pub took: Duration,
    /// The driver test's closing counts, if it got that far.
    pub counts: Option<Counts>,
    /// Why the boot failed, if it did.
    pub failure: Option<String>,
}

/// The first line of `text` that shows a kernel failure, if any.
pub fn judge_console(text: &str) -> Option<String> {
    text.lines()
        .find(|l| BAD_MARKERS.iter().any(|m| l.contains(m)))
        .map(|l| format!("the console shows `{}`", l.trim()))
}

/// Why a boot's console shows a failure, if it does.
pub fn judge(text: &str, timed_out: bool) -> Option<String> {
    if let Some(why) = judge_console(text) {
        return Some(why);
    }
    if timed_out {
        return Some(format!("no power-off within {}s", TIMEOUT.as_secs()));
    }
    let status = text
        .lines()
        .find_map(|l| l.trim().strip_prefix(DONE).map(|s| s.trim().to_string()));
    match status.as_deref() {
        None => Some("/init never finished".into()),
        Some("0") => None,
        Some(s) => Some(format!("/init finished with status {s}")),
    }
}

/// Boots the prepared kernel on `cpu` with `smp` CPUs.
pub fn boot(p: &Prepared, cpu: &str, smp: u32, echo: bool) -> Result<Boot, String> {
    let run = QemuRun {
        cpu: cpu.to_string(),
        mte: mte_supported(cpu),
        smmu: true,
        smp,
        kernel: p.hyp.clone(),
        initrd: Some(p.initramfs.clone()),
        loader: vec![(p.image.clone(), HOST_IMAGE_ADDR)],
        extra: Vec::new(),
        timeout: TIMEOUT,
    };
    let start = Instant::now();
    let out = run.run(&deps::qemu_binary(), echo)?;
    let took = start.elapsed();
    let counts = out.text.lines().rev().find_map(|l| {
        l.trim()
            .strip_prefix("driver-test: ")
            .and_then(Counts::parse)
    });
    let mut failure = judge(&out.text, out.timed_out);
    if failure.is_none() && counts.is_none_or(|c| c.failed != 0 || c.passed == 0) {
        failure = Some("the driver test printed no passing closing line".into());
    }
    if failure.is_none() && !out.status.is_some_and(|s| s.success()) {
        failure = Some(format!("QEMU exited with {:?}", out.status));
    }
    Ok(Boot {
        text: out.text,
        took,
        counts,
        failure,
    })
}

/// The Linux steps of `cargo xtask test`: the kernel on each CPU model and
/// CPU count; the driver test's counts are added to `total`.
pub fn tests(configs: &[(&Kernel, &str, u32)], total: &mut Counts) -> Result<(), String> {
    let mut prepared: Option<Prepared> = None;
    for &(k, cpu, smp) in configs {
        let step = format!("Linux host ({}, real image, {cpu}, {smp} CPUs)", k.name);
        if !crate::test_all::selected(&step) {
            continue;
        }
        if prepared.as_ref().is_none_or(|p| p.kernel.abi != k.abi) {
            println!("==> build: Linux host ({}), driver and driver test", k.name);
            prepared = Some(prepare(k).map_err(|e| format!("Linux host ({}): {e}", k.name))?);
        }
        let Some(p) = prepared.as_ref() else {
            continue;
        };
        println!("==> {step}");
        let b = boot(p, cpu, smp, false).map_err(|e| format!("{step}: {e}"))?;
        report(&b);
        if let Some(c) = b.counts {
            *total += c;
        }
        if let Some(why) = b.failure {
            println!("xtask: {why}");
            return Err(step);
        }
    }
    Ok(())
}

/// The driver test's summary and failures, and the boot time.
fn report(b: &Boot) {
    for l in b.text.lines() {
        let l = l.trim_end();
        if l.starts_with("driver-test")
            || l.starts_with("FAIL ")
            || l.starts_with("  ")
            || l.starts_with("LINUXHOST")
            || l.contains("pkvm_rs")
            || BAD_MARKERS.iter().any(|m| l.contains(m))
        {
            println!("{l}");
        }
    }
    println!("boot took {:.1}s", b.took.as_secs_f64());
}

/// The kernel `--kernel SERIES` names: `6.1` or `7.3`.
pub fn kernel(series: &str) -> Option<&'static Kernel> {
    [&BOOKWORM, &TRIXIE]
        .into_iter()
        .find(|k| k.name.strip_prefix("Debian ") == Some(series))
}

/// `cargo xtask linux [--cpu MODEL] [--smp N] [--kernel SERIES]`: one
/// boot, console echoed.
pub fn run(cpu: &str, smp: u32, k: &Kernel) -> ExitCode {
    deps::ensure_qemu();
    let p = match prepare(k) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("xtask: {e}");
            return ExitCode::from(2);
        }
    };
    match boot(&p, cpu, smp, true) {
        Ok(b) => {
            println!(
                "xtask: {} on {cpu}, {smp} CPUs: {:.1}s",
                p.kernel.name,
                b.took.as_secs_f64()
            );
            match b.failure {
                None => ExitCode::SUCCESS,
                Some(why) => {
                    eprintln!("xtask: {why}");
                    ExitCode::FAILURE
                }
            }
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
    fn newc_archive_layout() {
        let data = b"hello";
        let a = cpio_newc(&[CpioEntry {
            name: "init",
            mode: EXEC,
            rdev: (0, 0),
            data,
        }]);
        assert!(a.starts_with(b"070701"));
        // Header of 110 bytes, "init\0" padded to 4 from the start: 116,
        // then the data padded: 120, then the trailer.
        assert_eq!(&a[6..14], b"00000001");
        assert_eq!(&a[14..22], b"000081ED");
        assert_eq!(&a[54..62], b"00000005");
        assert_eq!(&a[94..102], b"00000005");
        assert_eq!(&a[110..115], b"init\0");
        assert_eq!(&a[116..121], b"hello");
        assert_eq!(&a[124..130], b"070701");
        assert!(a.ends_with(b"TRAILER!!!\0\0\0\0"));
        assert_eq!(a.len() % 4, 0);
    }

    #[test]
    fn busybox_root_has_the_directories_before_their_files() {
        let e = busybox_root(b"bb", b"#!/bin/busybox sh\n");
        let names: Vec<&str> = e.iter().map(|e| e.name).collect();
        assert_eq!(
            names,
            [
                "bin",
                "dev",
                "proc",
                "sys",
                "tmp",
                "dev/console",
                "bin/busybox",
                "init"
            ]
        );
        assert_eq!((e[5].mode, e[5].rdev), (CHAR_DEV, (5, 1)));
        assert_eq!((e[6].mode, e[6].data), (EXEC, &b"bb"[..]));
        assert!(e[..5].iter().all(|d| d.mode == DIR && d.data.is_empty()));
    }

    #[test]
    fn judging_a_console() {
        let ok = "boot\ndriver-test: 3 passed, 0 failed\nLINUXHOST DONE 0\n";
        assert_eq!(judge(ok, false), None);
        assert!(judge("LINUXHOST DONE 1\n", false).is_some());
        assert!(judge("boot\n", false).is_some());
        assert!(judge(ok, true).is_some());
        for bad in BAD_MARKERS {
            let text = format!("[  1.0] {bad} something\n{ok}");
            assert!(judge(&text, false).unwrap().contains(bad));
        }
    }

    #[test]
    fn pinned_packages() {
        let p = packages(&BOOKWORM);
        assert_eq!(p[0].0, "linux-image-6.1.0-57-arm64:arm64");
        assert_eq!(p[0].2, "linux-image-6.1.0-57-arm64_6.1.192-3_");
        assert_eq!(p[3].0, "linux-kbuild-6.1:amd64");
        assert_eq!(p[4].1, None);
    }
}
