//! `demo --cpu MODEL`: a short narrated tour of the hypervisor core on the
//! simulated QEMU `virt` board (what `cargo xtask run` shows until the EL2
//! image boots in QEMU). Exits 0 when every step behaved as the rules say.

use std::process::ExitCode;

use host_interface::{features, prot, Errno, HostCallId, MemType};
use scenario::{Machine, PageKind};
use sim::SimMachine;

struct Tour {
    m: SimMachine,
    ok: bool,
}

impl Tour {
    fn expect(
        &mut self,
        what: &str,
        id: HostCallId,
        args: &[u64],
        want: Result<(), Errno>,
    ) -> [u64; 5] {
        let r = self.m.call(id, args);
        let got = if r[0] == u64::MAX {
            "NOT_SUPPORTED".to_string()
        } else if r[1] == 0 {
            "ok".to_string()
        } else {
            Errno::from_x1(r[1]).map_or(format!("{:#x}", r[1]), |e| format!("-{}", e.name()))
        };
        let want_s = match want {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("-{}", e.name()),
        };
        let mark = if got == want_s { "  " } else { "!!" };
        self.ok &= got == want_s;
        println!("{mark} {what:<58} {:<18} -> {got}", id.name());
        r
    }
}

fn main() -> ExitCode {
    let mut model = String::from("max");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--cpu" => model = args.next().unwrap_or_default(),
            s if s.starts_with("--cpu=") => model = s[6..].to_string(),
            _ => {
                eprintln!("usage: demo [--cpu MODEL]");
                return ExitCode::from(2);
            }
        }
    }
    let m = match SimMachine::new(&model) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("demo: {e}");
            return ExitCode::from(2);
        }
    };
    let mut t = Tour { m, ok: true };
    let v = t.m.call(HostCallId::HypVersion, &[]);
    println!(
        "pkvm-rs hypervisor core, ABI {}.{} (simulator, QEMU virt, -cpu {model})",
        v[2] >> 16,
        v[2] & 0xffff
    );
    let f = t.m.call(HostCallId::HypFeatures, &[]);
    let names: Vec<&str> = features::ALL
        .iter()
        .filter(|(b, _)| f[2] & b != 0)
        .map(|(_, n)| *n)
        .collect();
    println!(
        "CPU features on every CPU: {}",
        if names.is_empty() {
            "none".into()
        } else {
            names.join(" ")
        }
    );
    let cpu = *t.m.hyp().cpu();
    if cpu.fwb && cpu.dic {
        println!("cacheable device memory: ALLOWED (FWB forces the stage-2 type; DIC makes I-cache maintenance unnecessary)");
    } else {
        let why: Vec<&str> = [
            (!cpu.fwb, "no FWB: a guest's stage 1 could weaken the type"),
            (
                !cpu.dic,
                "no DIC: executable cacheable mappings need I-cache maintenance",
            ),
        ]
        .iter()
        .filter(|(c, _)| *c)
        .map(|(_, w)| *w)
        .collect();
        println!("cacheable device memory: REFUSED ({})", why.join("; "));
    }
    println!();

    let page = t.m.alloc(PageKind::Ram, 4).expect("ram");
    let _ = t.m.host_write(page << 12, 0x5ec2e7);
    t.expect(
        "host shares a page with the hypervisor",
        HostCallId::ShareHyp,
        &[page, 1],
        Ok(()),
    );
    t.expect(
        "...and cannot share it twice",
        HostCallId::ShareHyp,
        &[page, 1],
        Err(Errno::EPERM),
    );
    let pool = t.m.alloc(PageKind::Ram, 16).expect("ram");
    let vm = t.expect(
        "host creates a protected VM with 16 pages of metadata",
        HostCallId::VmCreate,
        &[1, pool, 16],
        Ok(()),
    )[2];
    t.expect(
        "host donates a page holding a secret to it",
        HostCallId::GuestDonate,
        &[vm, page + 1, 0x80000, 1, prot::R | prot::W],
        Ok(()),
    );
    let read = t.m.host_read((page + 1) << 12);
    let refused = read.is_err();
    t.ok &= refused;
    println!(
        "{} {:<58} {:<18} -> {}",
        if refused { "  " } else { "!!" },
        "host reads the donated page back",
        "(load)",
        if refused {
            "abort injected, host carries on"
        } else {
            "READ SUCCEEDED"
        }
    );
    let dev = t.m.alloc(PageKind::MmioUc, 1).expect("mmio");
    let pool2 = t.m.alloc(PageKind::Ram, 16).expect("ram");
    let n1 = t.expect(
        "host creates a normal VM",
        HostCallId::VmCreate,
        &[0, pool2, 16],
        Ok(()),
    )[2];
    let pool3 = t.m.alloc(PageKind::Ram, 16).expect("ram");
    let n2 = t.expect(
        "host creates a second normal VM",
        HostCallId::VmCreate,
        &[0, pool3, 16],
        Ok(()),
    )[2];
    let nc = (MemType::NormalNc as u64) << 8;
    let dv = (MemType::Device as u64) << 8;
    t.expect(
        "host maps an MMIO page NORMAL_NC into VM 1",
        HostCallId::GuestMapDevice,
        &[n1, dev, 0x90000, 1, prot::R | prot::W | nc],
        Ok(()),
    );
    t.expect(
        "...and the same page DEVICE into VM 2 (mismatched alias)",
        HostCallId::GuestMapDevice,
        &[n2, dev, 0x90000, 1, prot::R | prot::W | dv],
        Err(Errno::EINVAL),
    );
    t.expect(
        "...or NORMAL_NC but executable",
        HostCallId::GuestMapDevice,
        &[n2, dev, 0x90000, 1, prot::R | prot::X | nc],
        Err(Errno::ENOEXEC),
    );
    let coh = t.m.alloc(PageKind::Coherent, 1).expect("coherent");
    let wb = (MemType::NormalWb as u64) << 8;
    let want = if cpu.fwb && cpu.dic {
        Ok(())
    } else {
        Err(Errno::EFAULT)
    };
    t.expect(
        "host maps COHERENT memory cacheable into VM 1",
        HostCallId::GuestMapDevice,
        &[n1, coh, 0x91000, 1, prot::R | prot::W | wb],
        want,
    );
    t.expect(
        "host destroys the protected VM",
        HostCallId::VmDestroy,
        &[vm],
        Ok(()),
    );
    t.expect(
        "host reclaims the secret page (scrubbed first)",
        HostCallId::Reclaim,
        &[page + 1, 1],
        Ok(()),
    );
    let after = t.m.host_read((page + 1) << 12);
    let scrubbed = after == Ok(0);
    t.ok &= scrubbed;
    println!(
        "{} {:<58} {:<18} -> {:x?}",
        if scrubbed { "  " } else { "!!" },
        "host reads it again",
        "(load)",
        after
    );
    println!();
    if t.ok {
        println!("demo: every request was answered as RULES.md says");
        ExitCode::SUCCESS
    } else {
        println!("demo: some answers differed from RULES.md (marked !!)");
        ExitCode::FAILURE
    }
}
