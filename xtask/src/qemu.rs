//! Running QEMU's `virt` machine the way the project does: EL2 available,
//! GICv3, 1 GiB of RAM, the console on standard output, nothing else
//! attached. [`QemuRun`] builds the command line and runs it with a time
//! limit, capturing (and optionally echoing) what the machine prints.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The one machine every run boots: EL2, GICv3, an SMMUv3 in front of the
/// PCIe root complex, and the PCIe ECAM below 4 GiB (at 0x3f00_0000), where
/// a small host reaches it.
pub const MACHINE: &str = "virt,virtualization=on,gic-version=3,iommu=smmuv3,highmem-ecam=off";
/// The same machine without the SMMU: only for `cargo xtask bench`, to
/// measure what the SMMU adds.
const MACHINE_NO_SMMU: &str = "virt,virtualization=on,gic-version=3,highmem-ecam=off";

/// The SMMU offers stage 2 (QEMU's default is stage 1 only); `nested`
/// gives both, as on virt-9.2 and later machines with nesting.
pub const SMMU_STAGES: &str = "arm-smmuv3.stage=nested";

/// QEMU's `edu` PCIe device with its DMA engine, at 00:01.0 (requester ID
/// and StreamID 0x0008). Without `dma_mask` it clips DMA addresses to 28
/// bits.
pub const EDU_DEVICE: &str = "edu,addr=01.0,dma_mask=0xffffffffffffffff";

/// CPU models whose QEMU implementation has MTE (so `mte=on` may be given).
const MTE_CPUS: [&str; 3] = ["cortex-a710", "neoverse-n2", "max"];

/// Whether QEMU's model `cpu` implements MTE.
pub fn mte_supported(cpu: &str) -> bool {
    MTE_CPUS.contains(&cpu)
}

/// One QEMU run.
#[derive(Clone, Debug)]
pub struct QemuRun {
    /// QEMU CPU model (`max` gets `pauth-impdef=on`, which is much faster).
    pub cpu: String,
    /// Give the machine MTE (`-machine ...,mte=on`).
    pub mte: bool,
    /// The SMMUv3 (always, except for the bench's baseline).
    pub smmu: bool,
    /// Number of CPUs.
    pub smp: u32,
    /// What `-kernel` loads (an arm64 Image: the hypervisor, or a kernel on
    /// its own).
    pub kernel: PathBuf,
    /// What `-initrd` loads, if anything.
    pub initrd: Option<PathBuf>,
    /// Raw files placed at physical addresses (`-device loader`).
    pub loader: Vec<(PathBuf, u64)>,
    /// Further arguments, appended last.
    pub extra: Vec<String>,
    /// QEMU is killed after this long.
    pub timeout: Duration,
}

/// What a run printed and how it ended.
#[derive(Debug)]
pub struct QemuOutput {
    /// Everything the machine wrote to its console, `\r\n` turned into `\n`.
    pub text: String,
    /// Whether QEMU was killed at the time limit.
    pub timed_out: bool,
    /// QEMU's exit status (after the kill, when it timed out).
    pub status: Option<ExitStatus>,
}

/// A file name inside a QEMU option list, where `,` must be doubled.
fn option_value(path: &Path) -> OsString {
    let text = path.to_string_lossy();
    if text.contains(',') {
        OsString::from(text.replace(',', ",,"))
    } else {
        path.as_os_str().to_owned()
    }
}

impl QemuRun {
    /// QEMU's arguments, in order.
    pub fn args(&self) -> Vec<OsString> {
        let mut machine = String::from(if self.smmu { MACHINE } else { MACHINE_NO_SMMU });
        if self.mte {
            machine.push_str(",mte=on");
        }
        let cpu = if self.cpu == "max" {
            "max,pauth-impdef=on".to_string()
        } else {
            self.cpu.clone()
        };
        let mut args: Vec<OsString> = [
            "-machine",
            &machine,
            "-cpu",
            &cpu,
            "-smp",
            &self.smp.to_string(),
            "-m",
            "1G",
            "-nographic",
            "-nic",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-kernel",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        args.push(self.kernel.clone().into_os_string());
        if self.smmu {
            args.push("-global".into());
            args.push(SMMU_STAGES.into());
        }
        args.push("-device".into());
        args.push(EDU_DEVICE.into());
        if let Some(initrd) = &self.initrd {
            args.push("-initrd".into());
            args.push(initrd.clone().into_os_string());
        }
        for (file, addr) in &self.loader {
            let mut device = OsString::from("loader,file=");
            device.push(option_value(file));
            device.push(format!(",addr={addr:#x},force-raw=on"));
            args.push("-device".into());
            args.push(device);
        }
        args.extend(self.extra.iter().map(OsString::from));
        args
    }

    /// The command that runs this machine with the QEMU binary `qemu`.
    pub fn command(&self, qemu: &Path) -> Command {
        let mut cmd = Command::new(qemu);
        cmd.args(self.args());
        cmd
    }

    /// Run the machine until QEMU exits or the time limit passes (then kill
    /// it), capturing its console; with `echo`, console lines are also
    /// printed as they come. QEMU's own messages go to standard error. A
    /// QEMU that fails without printing anything (it could not start the
    /// machine) is an error.
    pub fn run(&self, qemu: &Path, echo: bool) -> Result<QemuOutput, String> {
        run_command(self.command(qemu), self.timeout, echo)
    }
}

/// [`QemuRun::run`] for a QEMU command built by the caller (`cmd`'s program
/// is QEMU): runs it until it exits or `timeout` passes, capturing (and with
/// `echo` printing) its console.
pub fn run_command(mut cmd: Command, timeout: Duration, echo: bool) -> Result<QemuOutput, String> {
    let qemu = PathBuf::from(cmd.get_program());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", qemu.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let reader = collect(stdout, echo);
    let (timed_out, status) = wait_or_kill(&mut child, timeout)?;
    let out = QemuOutput {
        text: reader.join().unwrap_or_default(),
        timed_out,
        status,
    };
    match out.status {
        Some(s) if !out.timed_out && !s.success() && out.text.is_empty() => Err(format!(
            "{} failed ({s}) before the machine printed anything",
            qemu.display()
        )),
        _ => Ok(out),
    }
}

/// Read `from` line by line on a thread until it closes, echoing each line
/// to standard output if `echo`; the thread returns all of it with `\r\n`
/// made `\n`.
fn collect(from: impl Read + Send + 'static, echo: bool) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut reader = BufReader::new(from);
        let mut all = String::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if line.ends_with(b"\r\n") {
                line.truncate(line.len() - 2);
                line.push(b'\n');
            }
            let text = String::from_utf8_lossy(&line);
            if echo {
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(text.as_bytes());
                let _ = stdout.flush();
            }
            all.push_str(&text);
        }
        all
    })
}

/// Wait for `child` up to `timeout`, killing it then. Returns whether it
/// was killed, and its exit status.
fn wait_or_kill(
    child: &mut Child,
    timeout: Duration,
) -> Result<(bool, Option<ExitStatus>), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| format!("waiting for QEMU: {e}"))?
        {
            return Ok((false, Some(status)));
        }
        if Instant::now() >= deadline {
            // It may have exited just now: then kill fails harmlessly.
            let _ = child.kill();
            let status = child.wait().ok();
            return Ok((true, status));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cpu: &str) -> QemuRun {
        QemuRun {
            cpu: cpu.into(),
            mte: false,
            smmu: true,
            smp: 2,
            kernel: "hyp.bin".into(),
            initrd: None,
            loader: Vec::new(),
            extra: Vec::new(),
            timeout: Duration::from_secs(5),
        }
    }

    fn line(r: &QemuRun) -> String {
        r.args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn the_basic_command_line() {
        assert_eq!(
            line(&run("cortex-a57")),
            "-machine virt,virtualization=on,gic-version=3,iommu=smmuv3,highmem-ecam=off \
             -cpu cortex-a57 -smp 2 -m 1G -nographic -nic none -monitor none -serial stdio \
             -kernel hyp.bin -global arm-smmuv3.stage=nested \
             -device edu,addr=01.0,dma_mask=0xffffffffffffffff"
        );
        let cmd = run("cortex-a57").command(Path::new("/usr/bin/qemu-system-aarch64"));
        assert_eq!(cmd.get_program(), "/usr/bin/qemu-system-aarch64");
        assert_eq!(cmd.get_args().count(), run("cortex-a57").args().len());
    }

    #[test]
    fn max_gets_fast_pointer_auth_and_mte_goes_on_the_machine() {
        let mut r = run("max");
        r.mte = true;
        let l = line(&r);
        assert!(
            l.starts_with(
                "-machine virt,virtualization=on,gic-version=3,iommu=smmuv3,highmem-ecam=off,mte=on \
                 -cpu max,pauth-impdef=on "
            ),
            "{l}"
        );
    }

    #[test]
    fn initrd_loaders_and_extra_arguments() {
        let mut r = run("neoverse-n2");
        r.initrd = Some("blob.txt".into());
        r.loader = vec![
            ("host.bin".into(), 0x4400_0000),
            ("odd,name.bin".into(), 0x1000),
        ];
        r.extra = vec!["-d".into(), "guest_errors".into()];
        assert!(line(&r).ends_with(
            "-kernel hyp.bin -global arm-smmuv3.stage=nested \
             -device edu,addr=01.0,dma_mask=0xffffffffffffffff -initrd blob.txt \
             -device loader,file=host.bin,addr=0x44000000,force-raw=on \
             -device loader,file=odd,,name.bin,addr=0x1000,force-raw=on \
             -d guest_errors"
        ));
    }

    #[test]
    fn the_bench_baseline_has_no_smmu() {
        let mut r = run("max");
        r.smmu = false;
        let l = line(&r);
        assert!(!l.contains("smmu"), "{l}");
        assert!(l.contains("highmem-ecam=off"));
        assert!(l.contains("-device edu,"));
    }

    #[test]
    fn mte_models() {
        assert!(mte_supported("max"));
        assert!(mte_supported("cortex-a710"));
        assert!(mte_supported("neoverse-n2"));
        assert!(!mte_supported("cortex-a57"));
        assert!(!mte_supported("neoverse-v1"));
    }

    #[cfg(unix)]
    #[test]
    fn run_captures_output_and_kills_at_the_timeout() {
        // A stand-in for QEMU: a shell script that ignores its arguments.
        let dir = std::env::temp_dir().join(format!("xtask-qemu-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = |name: &str, body: &str| {
            use std::os::unix::fs::PermissionsExt;
            let p = dir.join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            p
        };
        let quick = script("quick", "printf 'one\\r\\ntwo\\n'; exit 3");
        let out = run("max").run(&quick, false).unwrap();
        assert_eq!(out.text, "one\ntwo\n");
        assert!(!out.timed_out);
        assert_eq!(out.status.and_then(|s| s.code()), Some(3));

        let silent = script("silent", "exit 1");
        assert!(run("max")
            .run(&silent, false)
            .unwrap_err()
            .contains("failed"));

        let slow = script("slow", "echo started; exec sleep 30");
        let mut r = run("max");
        r.timeout = Duration::from_millis(300);
        let started = Instant::now();
        let out = r.run(&slow, false).unwrap();
        assert!(out.timed_out);
        assert_eq!(out.text, "started\n");
        assert!(started.elapsed() < Duration::from_secs(10));

        assert!(run("max").run(&dir.join("missing"), false).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
