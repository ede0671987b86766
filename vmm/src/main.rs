//! `vmm`: a VMM for the pkvm-rs hypervisor's Linux host driver
//! (`/dev/pkvm-rs`, docs/DRIVER.md). It builds the guest's device tree,
//! loads an arm64 Linux Image and initramfs, runs one thread per vCPU and
//! emulates the GICv3 distributor and redistributors, a 16550 UART and
//! virtio-mmio console and block devices. docs/VMM.md describes it.

#![deny(clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]

mod cli;
mod fdt;
mod gic;
mod layout;
mod monitor;
mod uapi;
mod virtio;
mod vm;

use std::process::ExitCode;

/// An error for the user: one line saying what went wrong.
#[derive(Debug, PartialEq, Eq)]
pub struct Error(pub String);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match cli::parse(&args) {
        Ok(cli::Command::Help) => {
            print!("{}", cli::HELP);
            ExitCode::SUCCESS
        }
        Ok(cli::Command::Stats) => match vm::stats() {
            Ok(s) => {
                println!(
                    "pages_allocated {} pages_pinned {} pages_leaked {} vms {} pages_not_zeroed {}",
                    s.pages_allocated, s.pages_pinned, s.pages_leaked, s.vms, s.pages_not_zeroed
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vmm: {}", e.0);
                ExitCode::FAILURE
            }
        },
        Ok(cli::Command::Page(pfn)) => match vm::page_query(pfn) {
            Ok(i) => {
                println!(
                    "pfn {:#x} owner {} host_state {} mem_class {}",
                    i.pfn, i.owner, i.host_state, i.mem_class
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vmm: {}", e.0);
                ExitCode::FAILURE
            }
        },
        Ok(cli::Command::Run(opts)) => match vm::run(&opts) {
            Ok(vm::Outcome::PowerOff) => {
                eprintln!("vmm: the guest powered off");
                ExitCode::SUCCESS
            }
            Ok(vm::Outcome::Reset) => {
                eprintln!("vmm: the guest asked for a reset; this VMM does not restart guests");
                ExitCode::from(3)
            }
            Err(e) => {
                eprintln!("vmm: {}", e.0);
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("vmm: {}", e.0);
            ExitCode::from(2)
        }
    }
}
