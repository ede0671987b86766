//! Scenario files (`shared/spec/SCENARIOS.md`): their parser and
//! interpreter.
//!
//! A scenario says what a host and its guests do and what the hypervisor
//! must answer. This crate reads the text and drives a [`Machine`], which
//! carries out each statement: the simulator on the development machine,
//! or the test host kernel at EL1 on the real hypervisor. Both give the same
//! verdicts because the judging happens here.
//!
//! `no_std` + `alloc`, so the same code runs in both places; output goes to
//! a [`core::fmt::Write`]. No input text makes it panic: a line it cannot
//! read is one failed statement with a message, and the file goes on.
//!
//! Where SCENARIOS.md is silent, this crate decides:
//! - Whitespace only separates tokens: `a+1`, `a + 1` and `RW|WB` are one
//!   expression; two terms side by side are two arguments.
//! - `let NAME = EXPR` binds a value; `resume VM VCPU [DATA]` gives the data
//!   of a pending MMIO read (default 0); `host fill ... [-> ok|abort]`.
//! - `as NAME` needs `-> ok`. A successful `call VM_CREATE` (like
//!   `let g = vm ...`) records whether the handle is protected, for `boot`;
//!   an unknown handle boots as a normal VM.
//! - A guest line resumes through WFI, INTERRUPTED and MMIO exits it does not
//!   name (at most [`MAX_TRANSPARENT_RESUMES`] times); when it names an exit,
//!   only INTERRUPTED is passed over, since a host interrupt may come at any
//!   time on real hardware.
//! - `ok` after a guest call, or after `resume` of an exit that interrupted
//!   one, means x0 = 0; after anything else, that the operation finished.
//! - A statement is at most [`MAX_STATEMENT_LEN`] bytes, comment excluded.
//! - `device read ADDR -> VALUE|ok` and `device write ADDR VALUE [-> ok]`
//!   (project additions, RULES.md S1): the host's PCIe device, behind the
//!   hypervisor's SMMU, reads or writes 8 bytes at `ADDR` by DMA. A DMA the
//!   SMMU blocks is not an error the device sees: a blocked read hands it
//!   zeros and a blocked write is dropped, on QEMU and in the simulator
//!   alike, so the verdict is in the value read, or in what a later `host
//!   read` or `guest read` finds.

#![no_std]

extern crate alloc;

mod exec;
mod lex;
mod parse;

pub use exec::MAX_TRANSPARENT_RESUMES;
pub use lex::MAX_STATEMENT_LEN;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

/// What a scenario runs against.
pub trait Machine {
    /// Called before each file; a machine may reset state here. Err = the file cannot run (all its statements fail with that message).
    fn begin_file(&mut self, name: &str) -> Result<(), alloc::string::String>;
    /// Called after the file's statements ran (only when [`Machine::begin_file`] succeeded).
    fn end_file(&mut self);
    /// Issue a host hypercall: regs are x0..x6; returns x0..x4.
    fn host_call(&mut self, regs: [u64; 7]) -> [u64; 5];
    /// Host memory access at a physical address (8 bytes, little endian). Err(Abort) = the hypervisor injected an abort and the host survived.
    fn host_read(&mut self, pa: u64) -> Result<u64, Abort>;
    /// See [`Machine::host_read`].
    fn host_write(&mut self, pa: u64, value: u64) -> Result<(), Abort>;
    /// Sets `len` bytes from `pa` to `byte`. See [`Machine::host_read`].
    fn host_fill(&mut self, pa: u64, len: u64, byte: u8) -> Result<(), Abort>;
    /// Set aside `pages` contiguous pages of a kind for this scenario; returns the first pfn.
    fn alloc(&mut self, kind: PageKind, pages: u64) -> Result<u64, alloc::string::String>;
    /// A pfn inside the hypervisor's own memory.
    fn hyp_pfn(&mut self) -> u64;
    /// First pfn beyond the physical address space.
    fn pa_limit_pfn(&mut self) -> u64;
    /// Load the test guest into pages given to VM `vm` (donated when protected, shared otherwise) at IPA 0x4000_0000, start vCPU `vcpu` and run until it reports ready.
    fn guest_boot(&mut self, vm: u64, vcpu: u64, protected: bool) -> GuestOutcome;
    /// Post one operation to the test guest on that vCPU and run it (VCPU_RUN) until it completes or the vCPU exits to the host.
    fn guest_op(&mut self, vm: u64, vcpu: u64, op: GuestOp) -> GuestOutcome;
    /// VCPU_RUN again after an exit, completing the pending operation if it can. For a pending MMIO read the host supplies `mmio_read` as the data.
    fn guest_resume(&mut self, vm: u64, vcpu: u64, mmio_read: u64) -> GuestOutcome;
    /// The host's DMA-capable device reads 8 bytes at physical address `pa` (0 where the SMMU blocks it). Err = the machine has no such device (message).
    fn device_read(&mut self, pa: u64) -> Result<u64, alloc::string::String>;
    /// The device writes 8 bytes at `pa` (dropped where the SMMU blocks it). Err as for [`Machine::device_read`].
    fn device_write(&mut self, pa: u64, value: u64) -> Result<(), alloc::string::String>;
}

/// The hypervisor injected an abort into the host, and the host survived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Abort;

/// Which memory `let NAME = KIND N` sets aside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageKind {
    /// `ram`: host-owned RAM.
    Ram,
    /// `coherent`: the platform's COHERENT region.
    Coherent,
    /// `mmio`: an assignable MMIO region (DEVICE only).
    Mmio,
    /// `mmio_uc`: an MMIO region that allows NORMAL_NC.
    MmioUc,
}

/// One operation for the test guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestOp {
    /// Read 8 bytes at an IPA.
    Read { ipa: u64 },
    /// Write 8 bytes at an IPA.
    Write { ipa: u64, value: u64 },
    /// Branch to an IPA (and come back).
    Exec { ipa: u64 },
    /// A guest call: x0 (function ID) ..x6.
    Hvc { regs: [u64; 7] },
}

/// How a guest operation (or boot, or resume) ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestOutcome {
    /// The operation finished: the value read, or the guest call's x0, or 0 for write/exec/boot.
    Done(u64),
    /// VCPU_RUN returned to the host with this exit (ExitReason value) and, for MMIO/MEM_FAULT, the faulting IPA.
    Exit { reason: u64, ipa: Option<u64> },
    /// The VCPU_RUN host call itself failed: its x0..x4 (x0 = -1 NOT_SUPPORTED, or x1 = -errno).
    CallFailed([u64; 5]),
    /// The machine could not carry the statement out (message).
    Error(alloc::string::String),
}

/// Statements counted by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub passed: u32,
    pub failed: u32,
    pub skipped: u32,
}

impl core::ops::AddAssign for Tally {
    fn add_assign(&mut self, other: Tally) {
        self.passed = self.passed.saturating_add(other.passed);
        self.failed = self.failed.saturating_add(other.failed);
        self.skipped = self.skipped.saturating_add(other.skipped);
    }
}

/// The closing line, e.g. "12 passed, 0 failed" or "10 passed, 1 failed, 3 skipped" (", N skipped" only when N > 0).
pub fn summary_line(t: &Tally) -> String {
    let mut line = alloc::format!("{} passed, {} failed", t.passed, t.failed);
    if t.skipped > 0 {
        line.push_str(&alloc::format!(", {} skipped", t.skipped));
    }
    line
}

/// Why a statement failed: printed as `expected EXPECTED, got GOT[: MESSAGE]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Failure {
    expected: String,
    got: String,
    message: Option<String>,
}

impl Failure {
    pub(crate) fn new(expected: impl Into<String>, got: impl Into<String>) -> Failure {
        Failure {
            expected: expected.into(),
            got: got.into(),
            message: None,
        }
    }

    pub(crate) fn because(mut self, message: impl Into<String>) -> Failure {
        self.message = Some(message.into());
        self
    }

    /// Prints the failure as one line.
    fn report(&self, file: &str, line: usize, out: &mut dyn Write) {
        // A broken output sink cannot be reported anywhere: ignore it.
        let _ = write!(
            out,
            "{}:{line}: expected {}, got {}",
            OneLine(file),
            OneLine(&self.expected),
            OneLine(&self.got)
        );
        if let Some(message) = &self.message {
            let _ = write!(out, ": {}", OneLine(message));
        }
        let _ = writeln!(out);
    }
}

/// Text shown with control characters escaped, so that it stays on one
/// line whatever a machine's message holds.
struct OneLine<'a>(&'a str);

impl core::fmt::Display for OneLine<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_debug())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// `requires:` followed by the rest of the line, if this is such a line.
fn requires_line(code: &str) -> Option<&str> {
    code.strip_prefix("requires")?
        .trim_start()
        .strip_prefix(':')
}

/// What the `requires:` lines of a file ask for.
struct Requirements {
    /// Bits that must be set.
    present: u64,
    /// Bits that must be clear.
    absent: u64,
}

fn parse_requirements(lines: &[(usize, &str)]) -> Result<Option<Requirements>, Failure> {
    if lines.is_empty() {
        return Ok(None);
    }
    let mut req = Requirements {
        present: 0,
        absent: 0,
    };
    for &(line, rest) in lines {
        for word in rest.split_ascii_whitespace() {
            let (negated, name) = match word.strip_prefix('!') {
                Some(name) => (true, name),
                None => (false, word),
            };
            let Some(bit) = host_interface::features::from_name(name) else {
                return Err(Failure::new(
                    "a feature (fwb dic idc mte cacheable_device)",
                    parse::quote(name),
                )
                .because(alloc::format!(
                    "unknown feature in `requires:` at line {line}"
                )));
            };
            if negated {
                req.absent |= bit;
            } else {
                req.present |= bit;
            }
        }
    }
    Ok(Some(req))
}

/// Parse and run one file. Failed statements are printed as `FILE:LINE: expected EXPECTED, got ACTUAL` (plus `: message` where useful), one line each.
pub fn run_file(name: &str, text: &str, m: &mut dyn Machine, out: &mut dyn Write) -> Tally {
    run_file_traced(name, text, m, out, false)
}

/// [`run_file`], optionally narrating as it goes (`trace`): every comment
/// line that starts with `##` is printed as it is reached (without the
/// `##`), and every statement is printed with its verdict, e.g.
/// `    call SHARE_HYP a 1 -> ok   [ok]` or `... [FAILED: got EPERM]`.
/// Failure lines and the tally are the same as without tracing. Used for
/// demonstrations.
pub fn run_file_traced(
    name: &str,
    text: &str,
    m: &mut dyn Machine,
    out: &mut dyn Write,
    trace: bool,
) -> Tally {
    let narration: Vec<(usize, &str)> = if trace {
        text.lines()
            .enumerate()
            .filter_map(|(i, l)| l.trim_start().strip_prefix("##").map(|t| (i + 1, t.trim())))
            .collect()
    } else {
        Vec::new()
    };
    let mut narrated = 0;
    // (line number, code without comment or surrounding blanks)
    let mut statements: Vec<(usize, &str)> = Vec::new();
    let mut requires: Vec<(usize, &str)> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let code = match raw.find('#') {
            Some(at) => raw.get(..at).unwrap_or_default(),
            None => raw,
        }
        .trim();
        if code.is_empty() {
            continue;
        }
        let line = index.saturating_add(1);
        match requires_line(code) {
            Some(rest) if statements.is_empty() => requires.push((line, rest)),
            _ => statements.push((line, code)),
        }
    }
    let count = u32::try_from(statements.len()).unwrap_or(u32::MAX);
    let fail_all = |failure: Failure, out: &mut dyn Write| {
        for &(line, _) in &statements {
            failure.report(name, line, out);
        }
        Tally {
            failed: count,
            ..Tally::default()
        }
    };

    let requirements = match parse_requirements(&requires) {
        Ok(r) => r,
        Err(failure) => return fail_all(failure, out),
    };
    if let Some(req) = requirements {
        let features = match exec::hyp_features(m) {
            Ok(bits) => bits,
            Err(failure) => {
                return fail_all(
                    failure.because("HYP_FEATURES (for `requires:`) failed"),
                    out,
                )
            }
        };
        if features & req.present != req.present || features & req.absent != 0 {
            return Tally {
                skipped: count,
                ..Tally::default()
            };
        }
    }

    if let Err(message) = m.begin_file(name) {
        return fail_all(Failure::new("ok", "error").because(message), out);
    }
    let mut tally = Tally::default();
    let mut run = exec::Run::default();
    for &(line, code) in &statements {
        while let Some(&(at, words)) = narration.get(narrated) {
            if at > line {
                break;
            }
            let _ = writeln!(out, "{words}");
            narrated += 1;
        }
        match run.statement(code, m) {
            Ok(()) => {
                tally.passed = tally.passed.saturating_add(1);
                if trace {
                    let _ = writeln!(out, "    {code:<56} [ok]");
                }
            }
            Err(failure) => {
                if trace {
                    let _ = writeln!(out, "    {code:<56} [FAILED]");
                }
                failure.report(name, line, out);
                tally.failed = tally.failed.saturating_add(1);
            }
        }
    }
    for &(_, words) in narration.get(narrated..).unwrap_or_default() {
        let _ = writeln!(out, "{words}");
    }
    m.end_file();
    tally
}
