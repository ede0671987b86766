//! `sim --cpu MODEL FILE...`: run scenario files against the hypervisor core
//! on a simulated QEMU `virt` board with that CPU model's features. Prints a
//! line per failed statement and the closing `N passed, N failed` line; exit
//! status 0 only when nothing failed (SCENARIOS.md).

use std::process::ExitCode;

use scenario::{run_file, summary_line, Tally};
use sim::SimMachine;

fn usage() -> ExitCode {
    eprintln!("usage: sim [--cpu MODEL] FILE...");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut model = String::from("max");
    let mut files = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--cpu" => match args.next() {
                Some(m) => model = m,
                None => return usage(),
            },
            s if s.starts_with("--cpu=") => model = s["--cpu=".len()..].to_string(),
            "--sim" => {}
            s if s.starts_with('-') => return usage(),
            _ => files.push(a),
        }
    }
    if files.is_empty() {
        return usage();
    }
    if let Err(e) = SimMachine::new(&model) {
        eprintln!("sim: {e}");
        return ExitCode::from(2);
    }
    let mut total = Tally::default();
    for f in &files {
        let mut out = String::new();
        match std::fs::read_to_string(f) {
            Ok(text) => {
                let mut m = match SimMachine::new(&model) {
                    Ok(m) => m,
                    Err(e) => {
                        eprintln!("sim: {e}");
                        return ExitCode::from(2);
                    }
                };
                total += run_file(f, &text, &mut m, &mut out);
            }
            Err(e) => {
                out.push_str(&format!("{f}: cannot read: {e}\n"));
                total.failed += 1;
            }
        }
        print!("{out}");
    }
    println!("{}", summary_line(&total));
    if total.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
