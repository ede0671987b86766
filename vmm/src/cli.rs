//! The command line: `vmm run --kernel Image [...]` and `--help`.

use std::path::PathBuf;

use crate::Error;

/// The default kernel command line: the UART as console (with an early
/// console from the first line of boot), and a panic ends the VM.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 earlycon=uart8250,mmio,0x9000000 panic=-1";

/// The default for a protected VM: no early console, since a protected
/// guest's device accesses can be emulated only on pages it registered
/// with MMIO_GUARD, which the early console's mapping precedes.
pub const PROTECTED_CMDLINE: &str = "console=ttyS0 panic=-1";

pub const HELP: &str = "\
vmm: run a Linux guest on the pkvm-rs hypervisor, through /dev/pkvm-rs

Usage:
  vmm run --kernel FILE [--initrd FILE] [--disk FILE] [--cpus N] [--mem MIB]
          [--cmdline STRING] [--protected] [--monitor FIFO]
  vmm stats
  vmm page PFN
  vmm --help

Options of `run`:
  --kernel FILE     an arm64 Linux Image (uncompressed)
  --initrd FILE     an initramfs, given to the kernel through the device tree
  --disk FILE       a raw disk image, the guest's virtio block device (read-write)
  --cpus N          vCPUs, one thread each (default 1)
  --mem MIB         guest RAM in MiB (default 256)
  --cmdline STRING  the kernel command line
                    (default: \"console=ttyS0 earlycon=uart8250,mmio,0x9000000 panic=-1\";
                    with --protected \"console=ttyS0 panic=-1\")
  --monitor FIFO    read commands from the named pipe FIFO, one a line,
                    and answer each on standard output (`vmm monitor: `):
                    `peek IPA` reads guest memory through the VMM's own
                    mapping (protected VMs; SIGBUS is caught and reported),
                    `query IPA` the driver's PKVM_RS_GUEST_PAGE
  --protected       a protected VM: its memory is donated (the hypervisor
                    takes it from the host), the virtio devices use a
                    restricted DMA pool the guest shares back; needs a
                    guest kernel with pKVM guest support (MMIO_GUARD,
                    MEM_SHARE) and CONFIG_DMA_RESTRICTED_POOL

`stats` prints what the driver holds now, over all VMs: pages allocated,
pages pinned, pages leaked, live VMs, and reclaimed pages found not zeroed.
`page PFN` prints the hypervisor's PAGE_QUERY of a physical frame (owner,
host state, memory class).

The guest gets a 16550 UART (ttyS0) and a virtio console (hvc0), both
printed on standard output, a GICv3 and PSCI. The VMM exits 0 when the
guest powers off, 3 when it resets, 1 on an error and 2 on a usage error.
";

/// What `vmm run` was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub disk: Option<PathBuf>,
    pub cpus: usize,
    pub mem_mib: u64,
    pub cmdline: String,
    pub protected: bool,
    pub monitor: Option<PathBuf>,
}

/// What the command line asks.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Help,
    Stats,
    Page(u64),
    Run(Options),
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Command, Error> {
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        None => return Err(Error("no command (try `vmm --help`)".into())),
        Some("--help" | "-h" | "help") => return Ok(Command::Help),
        Some("stats") => return Ok(Command::Stats),
        Some("page") => {
            let v = it.next().ok_or_else(|| Error("page needs a PFN".into()))?;
            return crate::monitor::parse_u64(v)
                .map(Command::Page)
                .ok_or_else(|| Error(format!("page {v}: not a number")));
        }
        Some("run") => {}
        Some(other) => {
            return Err(Error(format!(
                "unknown command `{other}` (try `vmm --help`)"
            )))
        }
    }
    let mut kernel = None;
    let mut cmdline = None;
    let mut o = Options {
        kernel: PathBuf::new(),
        initrd: None,
        disk: None,
        cpus: 1,
        mem_mib: 256,
        cmdline: DEFAULT_CMDLINE.into(),
        protected: false,
        monitor: None,
    };
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| Error(format!("{a} needs a value")))
        };
        match a.as_str() {
            "--help" | "-h" => return Ok(Command::Help),
            "--kernel" => kernel = Some(PathBuf::from(value()?)),
            "--initrd" => o.initrd = Some(PathBuf::from(value()?)),
            "--disk" => o.disk = Some(PathBuf::from(value()?)),
            "--cmdline" => cmdline = Some(value()?),
            "--protected" => o.protected = true,
            "--monitor" => o.monitor = Some(PathBuf::from(value()?)),
            "--cpus" => {
                let v = value()?;
                o.cpus = v
                    .parse()
                    .ok()
                    .filter(|&n| (1..=64).contains(&n))
                    .ok_or_else(|| Error(format!("--cpus {v}: expected 1 to 64")))?;
            }
            "--mem" => {
                let v = value()?;
                // At least room for a kernel; at most the driver's 4 GiB region.
                o.mem_mib = v
                    .parse()
                    .ok()
                    .filter(|&n| (16..=4096).contains(&n))
                    .ok_or_else(|| Error(format!("--mem {v}: expected 16 to 4096 (MiB)")))?;
            }
            other => {
                return Err(Error(format!(
                    "unknown option `{other}` (try `vmm --help`)"
                )))
            }
        }
    }
    o.cmdline = cmdline.unwrap_or_else(|| {
        if o.protected {
            PROTECTED_CMDLINE.into()
        } else {
            DEFAULT_CMDLINE.into()
        }
    });
    o.kernel = kernel.ok_or_else(|| Error("run: --kernel FILE is required".into()))?;
    Ok(Command::Run(o))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn full_run_line() {
        let c = parse(&args(
            "run --kernel I --initrd R --disk D --cpus 2 --mem 128 --protected",
        ))
        .unwrap();
        assert_eq!(
            c,
            Command::Run(Options {
                kernel: "I".into(),
                initrd: Some("R".into()),
                disk: Some("D".into()),
                cpus: 2,
                mem_mib: 128,
                cmdline: PROTECTED_CMDLINE.into(),
                protected: true,
                monitor: None,
            })
        );
    }

    #[test]
    fn a_given_command_line_wins() {
        let Command::Run(o) = parse(&args("run --kernel I --cmdline quiet --protected")).unwrap()
        else {
            panic!("not a run");
        };
        assert_eq!(o.cmdline, "quiet");
        let Command::Run(o) = parse(&args("run --kernel I")).unwrap() else {
            panic!("not a run");
        };
        assert_eq!(o.cmdline, DEFAULT_CMDLINE);
    }

    #[test]
    fn help_and_errors() {
        assert_eq!(parse(&args("--help")).unwrap(), Command::Help);
        assert_eq!(
            parse(&args("run --kernel I --help")).unwrap(),
            Command::Help
        );
        assert!(parse(&args("run")).unwrap_err().0.contains("--kernel"));
        assert!(parse(&args("run --kernel"))
            .unwrap_err()
            .0
            .contains("needs a value"));
        assert!(parse(&args("run --kernel I --cpus 0"))
            .unwrap_err()
            .0
            .contains("--cpus 0"));
        assert!(parse(&args("run --kernel I --mem lots"))
            .unwrap_err()
            .0
            .contains("--mem lots"));
        assert!(parse(&args("run --kernel I --frobnicate"))
            .unwrap_err()
            .0
            .contains("--frobnicate"));
        assert!(parse(&args("start")).is_err());
        assert_eq!(parse(&args("page 0x1000")).unwrap(), Command::Page(0x1000));
        assert!(parse(&args("page")).is_err());
        assert!(parse(&args("page x")).is_err());
        let Command::Run(o) = parse(&args("run --kernel I --monitor /m")).unwrap() else {
            panic!("not a run");
        };
        assert_eq!(o.monitor, Some("/m".into()));
        assert!(parse(&[]).is_err());
    }
}
