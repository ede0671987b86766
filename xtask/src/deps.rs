//! Tools the build and the tests need, installed when missing where that is
//! safe to do unasked (a rustup target; QEMU from Debian backports as root),
//! otherwise reported with the commands to run. Every action is printed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{self, Command};

use crate::workspace_root;

/// The bare-metal targets: the EL2 image builds without FP/SIMD
/// (softfloat), the test host kernel and guest with it.
pub const RUST_TARGETS: [&str; 2] = ["aarch64-unknown-none", "aarch64-unknown-none-softfloat"];

/// The QEMU binary that runs the image.
const QEMU: &str = "qemu-system-aarch64";

/// Oldest QEMU whose CPU models have FEAT_S2FWB and CTR_EL0.DIC.
const QEMU_MIN_MAJOR: u32 = 10;

const BACKPORTS: &str = "bookworm-backports";
const BACKPORTS_LIST: &str = "/etc/apt/sources.list.d/bookworm-backports.list";
const BACKPORTS_LINE: &str = "deb http://deb.debian.org/debian bookworm-backports main";

/// Makes sure the `aarch64-unknown-none` standard library is installed for
/// the workspace's toolchain; exits 1 with what to run if it cannot.
pub fn ensure_rust_target() {
    let installed = rustup().args(["target", "list", "--installed"]).output();
    let installed = match installed {
        Ok(out) if out.status.success() => out.stdout,
        Ok(out) => fail_rust_target(&format!(
            "`rustup target list --installed` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => fail_rust_target(&format!("cannot run rustup: {e}")),
    };
    let installed = String::from_utf8_lossy(&installed);
    for target in RUST_TARGETS {
        if installed.lines().any(|l| l.trim() == target) {
            continue;
        }
        println!("xtask: installing the Rust target {target}: rustup target add {target}");
        match rustup().args(["target", "add", target]).status() {
            Ok(s) if s.success() => {}
            Ok(s) => fail_rust_target(&format!("`rustup target add {target}` exited with {s}")),
            Err(e) => fail_rust_target(&format!("cannot run rustup: {e}")),
        }
    }
}

/// rustup, run in the workspace so that rust-toolchain.toml picks the
/// toolchain.
fn rustup() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.current_dir(workspace_root());
    cmd
}

fn fail_rust_target(why: &str) -> ! {
    eprintln!(
        "xtask: error: the Rust targets {and} are needed and could not be installed ({why}).\n\
         xtask: install rustup (https://rustup.rs), then run, in {root}:\n\
         \n    rustup target add {list}\n",
        and = RUST_TARGETS.join(" and "),
        list = RUST_TARGETS.join(" "),
        root = workspace_root().display()
    );
    process::exit(1);
}

/// The QEMU to run: `qemu-system-aarch64` as found on `PATH`, or the bare
/// name when it is not there.
pub fn qemu_binary() -> PathBuf {
    find_in_path(QEMU).unwrap_or_else(|| PathBuf::from(QEMU))
}

/// Makes sure `qemu-system-aarch64` >= 10 is installed: installs it from
/// Debian bookworm-backports when running as root on Debian, otherwise
/// exits 1 with the commands to run.
pub fn ensure_qemu() {
    let found = qemu_version();
    if let Ok(major) = found {
        if major >= QEMU_MIN_MAJOR {
            return;
        }
    }
    let problem = match found {
        Ok(major) => format!(
            "{} is QEMU {major}; QEMU >= {QEMU_MIN_MAJOR} is needed (CPU models with FWB and DIC)",
            qemu_binary().display()
        ),
        Err(e) => format!("{e}; QEMU >= {QEMU_MIN_MAJOR} is needed (CPU models with FWB and DIC)"),
    };
    if !(is_root()
        && Path::new("/etc/debian_version").exists()
        && find_in_path("apt-get").is_some())
    {
        fail_qemu(&problem);
    }
    println!("xtask: {problem}");
    println!("xtask: installing QEMU {QEMU_MIN_MAJOR} from {BACKPORTS}");
    if !backports_configured() {
        println!("xtask: adding {BACKPORTS_LIST}: {BACKPORTS_LINE}");
        if let Err(e) = fs::write(BACKPORTS_LIST, format!("{BACKPORTS_LINE}\n")) {
            fail_qemu(&format!("cannot write {BACKPORTS_LIST}: {e}"));
        }
    }
    apt(&["update"]);
    apt(&["install", "-y", "-t", BACKPORTS, "qemu-system-arm"]);
    match qemu_version() {
        Ok(major) if major >= QEMU_MIN_MAJOR => {
            println!("xtask: QEMU {major} installed");
        }
        Ok(major) => fail_qemu(&format!(
            "after installing from {BACKPORTS}, {} is still QEMU {major}",
            qemu_binary().display()
        )),
        Err(e) => fail_qemu(&format!("after installing from {BACKPORTS}: {e}")),
    }
}

/// The major version of `qemu-system-aarch64 --version`.
fn qemu_version() -> Result<u32, String> {
    let Some(qemu) = find_in_path(QEMU) else {
        return Err(format!("{QEMU} not found on PATH"));
    };
    let out = Command::new(&qemu)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {} --version: {e}", qemu.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_qemu_major(&text).ok_or_else(|| {
        format!(
            "cannot read a version from `{} --version`: {}",
            qemu.display(),
            text.lines().next().unwrap_or("").trim()
        )
    })
}

/// `QEMU emulator version 10.0.2 (Debian ...)` -> 10.
fn parse_qemu_major(text: &str) -> Option<u32> {
    let (_, rest) = text.split_once("version ")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Whether some apt source (one-line or deb822) already names
/// bookworm-backports.
fn backports_configured() -> bool {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(dir.flatten().map(|e| e.path()));
    }
    files.iter().any(|f| {
        fs::read_to_string(f)
            .map(|s| s.contains(BACKPORTS))
            .unwrap_or(false)
    })
}

fn apt(args: &[&str]) {
    println!(
        "xtask: DEBIAN_FRONTEND=noninteractive apt-get {}",
        args.join(" ")
    );
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => fail_qemu(&format!("`apt-get {}` exited with {s}", args.join(" "))),
        Err(e) => fail_qemu(&format!("cannot run apt-get: {e}")),
    }
}

fn fail_qemu(why: &str) -> ! {
    eprintln!(
        "xtask: error: {why}.\n\
         xtask: to install QEMU >= {QEMU_MIN_MAJOR} on Debian bookworm, run:\n\
         \n    echo '{BACKPORTS_LINE}' | sudo tee {BACKPORTS_LIST}\
         \n    sudo apt-get update\
         \n    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -t {BACKPORTS} qemu-system-arm\n\
         \nxtask: elsewhere, install QEMU >= {QEMU_MIN_MAJOR} with {QEMU} on PATH \
         (https://www.qemu.org/download/)."
    );
    process::exit(1);
}

/// Whether this process runs with effective user id 0.
fn is_root() -> bool {
    // Without libc: the `Uid:` line of /proc/self/status is
    // real, effective, saved, filesystem.
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1))
                .map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// The first executable file named `name` in a directory of `PATH`.
fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

#[cfg(test)]
mod tests {
    use super::parse_qemu_major;

    #[test]
    fn qemu_versions() {
        assert_eq!(
            parse_qemu_major(
                "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\n\
                 Copyright (c) 2003-2025 Fabrice Bellard and the QEMU Project developers\n"
            ),
            Some(10)
        );
        assert_eq!(
            parse_qemu_major("QEMU emulator version 7.2.15 (Debian 1:7.2+dfsg-7+deb12u12)"),
            Some(7)
        );
        assert_eq!(parse_qemu_major("qemu-system-aarch64: bad option"), None);
    }
}
