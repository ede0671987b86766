//! The scenario blob the runner hands over as the initrd (UTF-8 text):
//!
//! ```text
//! pkvm-scenarios 1 cpu=<MODEL> [trace|demo|bench|fuzz|irq|guestfuzz|abifuzz|isolation|dma]
//! === FILE <path>
//! <the file's text, up to the next `=== FILE ` line or the end>
//! === FILE <path>
//! ...
//! ```

use alloc::string::String;
use alloc::vec::Vec;

const MAGIC: &str = "pkvm-scenarios";
const VERSION: &str = "1";
const FILE_MARK: &str = "=== FILE ";

/// How to run the files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Print failures and the tally.
    Scenarios,
    /// Also narrate every statement (`scenario::run_file_traced`).
    Trace,
    /// `cargo xtask run`: narrate the files like [`Mode::Trace`], then run
    /// the protected guest demonstration (`crate::guest_demo`), counted in
    /// the same tally.
    Demo,
    /// Measure host-call and stage-2 fault costs (`crate::bench`); the
    /// files, if any, are ignored.
    Bench,
    /// Fire random host calls from two CPUs, then check the hypervisor
    /// (`crate::fuzz`); the files, if any, are ignored.
    Fuzz,
    /// Interrupts into guests and preemption (`crate::guest_irq`); the
    /// files, if any, are ignored.
    Irq,
    /// Guests calling the hypervisor with random arguments, faulting, and
    /// touching unemulated registers (`crate::guest_fuzz`); the files, if
    /// any, are ignored.
    GuestFuzz,
    /// Guests on two CPUs at once that fuzz the guest ABI from inside,
    /// checking every answer and register themselves (`crate::abi_fuzz`);
    /// the files, if any, are ignored.
    AbiFuzz,
    /// Device DMA through the SMMU against every kind of page, and the
    /// withheld bus masters (`crate::dma`); the files, if any, are ignored.
    Dma,
    /// Attacks on CPU state, vCPU start, SMCCC registers and the
    /// hypervisor's resources (`crate::isolation`); the files, if any, are
    /// ignored.
    Isolation,
}

/// A parsed blob: borrowed from its text.
#[derive(Debug, PartialEq, Eq)]
pub struct Blob<'a> {
    /// The CPU model the runner asked QEMU for.
    pub cpu: &'a str,
    /// How to run the files.
    pub mode: Mode,
    /// `(path, text)` of each file, in order.
    pub files: Vec<(&'a str, &'a str)>,
}

/// Split the blob into its files.
pub fn parse(text: &str) -> Result<Blob<'_>, String> {
    let (header, mut rest) = text.split_once('\n').unwrap_or((text, ""));
    let mut words = header.split_ascii_whitespace();
    let (Some(MAGIC), Some(VERSION), Some(cpu), mode, None) = (
        words.next(),
        words.next(),
        words.next(),
        words.next(),
        words.next(),
    ) else {
        return Err(alloc::format!(
            "the initrd is not a scenario blob (first line {header:?})"
        ));
    };
    let cpu = cpu
        .strip_prefix("cpu=")
        .ok_or_else(|| alloc::format!("no cpu= in the blob header {header:?}"))?;
    let mode = match mode {
        None => Mode::Scenarios,
        Some("trace") => Mode::Trace,
        Some("demo") => Mode::Demo,
        Some("bench") => Mode::Bench,
        Some("fuzz") => Mode::Fuzz,
        Some("irq") => Mode::Irq,
        Some("guestfuzz") => Mode::GuestFuzz,
        Some("abifuzz") => Mode::AbiFuzz,
        Some("dma") => Mode::Dma,
        Some("isolation") => Mode::Isolation,
        Some(other) => {
            return Err(alloc::format!(
                "mode `{other}` is not supported by this test host"
            ))
        }
    };

    let mut files = Vec::new();
    while !rest.is_empty() {
        let Some(line_rest) = rest.strip_prefix(FILE_MARK) else {
            if files.is_empty() && rest.trim().is_empty() {
                break;
            }
            return Err("text before the first `=== FILE ` line of the blob".into());
        };
        let (path, body) = line_rest.split_once('\n').unwrap_or((line_rest, ""));
        // The file runs to the next line that starts with the mark.
        let end = body
            .match_indices(FILE_MARK)
            .map(|(at, _)| at)
            .find(|&at| at == 0 || body.as_bytes().get(at - 1) == Some(&b'\n'))
            .unwrap_or(body.len());
        let (file, next) = body.split_at(end);
        files.push((path.trim_end_matches('\r'), file));
        rest = next;
    }
    Ok(Blob { cpu, mode, files })
}
