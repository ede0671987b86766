//! `demo --cpu MODEL`: the narrated tour of `tests/demo/*.scn` against the
//! hypervisor core on the simulated QEMU `virt` board (what `cargo xtask run
//! --sim` shows; `cargo xtask run` shows the same tour on the real image).
//! Exits 0 when every step behaved as the rules say.

use std::process::ExitCode;

use host_interface::HostCallId;
use scenario::{run_file_traced, summary_line, Tally};
use sim::SimMachine;

/// The tour, in order (the same files the real image's demo runs).
pub const TOUR: [(&str, &str); 3] = [
    (
        "tests/demo/1-tour.scn",
        include_str!("../../../demo/1-tour.scn"),
    ),
    (
        "tests/demo/2-cacheable.scn",
        include_str!("../../../demo/2-cacheable.scn"),
    ),
    (
        "tests/demo/3-not-cacheable.scn",
        include_str!("../../../demo/3-not-cacheable.scn"),
    ),
];

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
    let mut m = match SimMachine::new(&model) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("demo: {e}");
            return ExitCode::from(2);
        }
    };
    let v = m.call(HostCallId::HypVersion, &[]);
    println!(
        "pkvm-rs hypervisor core, ABI {}.{} (simulator: QEMU virt, -cpu {model})",
        v[2] >> 16,
        v[2] & 0xffff
    );
    let cpu = *m.hyp().cpu();
    let names: Vec<&str> = hyp::feature_names(cpu.hyp_feature_bits()).collect();
    println!(
        "features on every CPU: {}",
        if names.is_empty() {
            "none".into()
        } else {
            names.join(" ")
        }
    );
    if cpu.cacheable_device() {
        println!("cacheable device memory ALLOWED (FWB and DIC on every CPU)");
    } else {
        println!(
            "cacheable device memory REFUSED ({}{})",
            if cpu.fwb {
                ""
            } else {
                "no FWB: a guest's stage 1 could weaken the type; "
            },
            if cpu.dic {
                ""
            } else {
                "no DIC: executable cacheable mappings need I-cache maintenance"
            }
        );
    }
    println!();
    let mut total = Tally::default();
    for (name, text) in TOUR {
        let mut out = String::new();
        total += run_file_traced(name, text, &mut m, &mut out, true);
        print!("{out}");
    }
    println!("\n{}", summary_line(&total));
    if total.failed == 0 {
        println!("demo: every request was answered as RULES.md says");
        ExitCode::SUCCESS
    } else {
        println!("demo: some answers differed from RULES.md");
        ExitCode::FAILURE
    }
}
