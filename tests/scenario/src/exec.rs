//! Running parsed statements against a [`Machine`], and what a file's run
//! remembers between statements: bindings, which VMs are protected, and
//! which operation each vCPU left pending at an exit.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use host_interface::{
    vm_flags, Errno, ExitReason, HostCallId, PAGE_SHIFT, PAGE_SIZE, SMCCC_INVALID_PARAMETER,
    SMCCC_NOT_SUPPORTED,
};

use crate::lex::{lex, MAX_STATEMENT_LEN};
use crate::parse::{
    parse, quote, Addr, CallExpect, Expr, GuestExpect, GuestOpSyntax, MemExpect, Source, Statement,
};
use crate::{Failure, GuestOp, GuestOutcome, Machine, PageKind};

/// How many times one statement resumes a vCPU on its own (WFI,
/// INTERRUPTED, MMIO exits the statement did not name) before giving up.
pub const MAX_TRANSPARENT_RESUMES: u32 = 64;

/// Pages given to VM_CREATE by `let g = vm ...`.
const VM_CREATE_PAGES: u64 = 8;
/// Pages given to VM_TOPUP by `let g = vm ...`.
const VM_TOPUP_PAGES: u64 = 64;

/// What a guest line asked the vCPU to do: decides what `ok` means (a guest
/// call must return 0) and how values are shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpKind {
    Boot,
    Read,
    Write,
    Exec,
    Hvc,
    /// A `resume` with no operation known to be pending.
    Unknown,
}

/// A guest line's expectation, evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    Ok,
    Value(u64),
    Exit {
        reason: ExitReason,
        ipa: Option<u64>,
    },
    Errno(Errno),
}

/// The state of one file's run.
#[derive(Default)]
pub(crate) struct Run {
    bindings: BTreeMap<String, u64>,
    /// VM handle -> protected, for VMs this file created.
    protected: BTreeMap<u64, bool>,
    /// (VM, vCPU) -> the operation an exit interrupted.
    pending: BTreeMap<(u64, u64), OpKind>,
}

impl Run {
    /// Parses and runs one statement (comment and surrounding blanks
    /// already removed).
    pub fn statement(&mut self, code: &str, m: &mut dyn Machine) -> Result<(), Failure> {
        if code.len() > MAX_STATEMENT_LEN {
            return Err(Failure::new(
                format!("a statement of at most {MAX_STATEMENT_LEN} bytes"),
                format!("{} bytes", code.len()),
            )
            .because("line too long"));
        }
        let tokens = lex(code)?;
        let statement = parse(&tokens)?;
        self.exec(statement, m)
    }

    fn eval(&self, e: &Expr<'_>) -> Result<u64, Failure> {
        e.eval(&|name| self.bindings.get(name).copied())
            .map_err(|name| {
                Failure::new("a bound name", quote(name)).because(format!("unbound name {name}"))
            })
    }

    fn eval_all(&self, exprs: &[Expr<'_>]) -> Result<Vec<u64>, Failure> {
        exprs.iter().map(|e| self.eval(e)).collect()
    }

    fn check_unbound(&self, name: &str) -> Result<(), Failure> {
        if self.bindings.contains_key(name) {
            Err(Failure::new("a new name", quote(name)).because(format!("{name} is already bound")))
        } else {
            Ok(())
        }
    }

    fn exec(&mut self, statement: Statement<'_>, m: &mut dyn Machine) -> Result<(), Failure> {
        match statement {
            Statement::Let { name, source } => {
                self.check_unbound(name)?;
                let value = self.source(source, m)?;
                self.bindings.insert(name.to_string(), value);
                Ok(())
            }
            Statement::Call {
                func,
                args,
                expect,
                regs,
                bind,
            } => {
                if let Some(name) = bind {
                    self.check_unbound(name)?;
                }
                let mut x = [0u64; 7];
                x[0] = func.id;
                for (slot, value) in x.iter_mut().skip(1).zip(self.eval_all(&args)?) {
                    *slot = value;
                }
                let wanted: Vec<(usize, u64)> = regs
                    .iter()
                    .map(|(n, e)| Ok((*n, self.eval(e)?)))
                    .collect::<Result<_, Failure>>()?;
                let r = m.host_call(x);
                if succeeded(&r) && func.id == u64::from(HostCallId::VmCreate.id()) {
                    self.protected.insert(r[2], x[1] & vm_flags::PROTECTED != 0);
                }
                let result_matches = match expect {
                    CallExpect::Ok => succeeded(&r),
                    CallExpect::Errno(e) => r[0] == 0 && r[1] == e.to_x1(),
                    CallExpect::NotSupported => r[0] == SMCCC_NOT_SUPPORTED,
                };
                if !result_matches {
                    return Err(Failure::new(show_call_expect(expect), show_host_result(&r)));
                }
                let mut expected = String::new();
                let mut got = String::new();
                for (n, want) in wanted {
                    let actual = r.get(n).copied().unwrap_or_default();
                    if actual != want {
                        let sep = if expected.is_empty() { "" } else { " " };
                        expected.push_str(&format!("{sep}x{n}={want:#x}"));
                        got.push_str(&format!("{sep}x{n}={actual:#x}"));
                    }
                }
                if !expected.is_empty() {
                    return Err(Failure::new(expected, got));
                }
                if let Some(name) = bind {
                    self.bindings.insert(name.to_string(), r[2]);
                }
                Ok(())
            }
            Statement::HostRead { addr, expect } => {
                let pa = self.pa(&addr)?;
                let want = self.mem_want(&expect)?;
                let got = m.host_read(pa);
                let pass = match (want, got) {
                    (MemWant::Ok, Ok(_)) | (MemWant::Abort, Err(_)) => true,
                    (MemWant::Value(v), Ok(x)) => v == x,
                    _ => false,
                };
                if pass {
                    return Ok(());
                }
                let got = match got {
                    Ok(v) => format!("{v:#x}"),
                    Err(_) => String::from("abort"),
                };
                Err(Failure::new(want.show(), got))
            }
            Statement::HostWrite {
                addr,
                value,
                expect,
            } => {
                let pa = self.pa(&addr)?;
                let value = self.eval(&value)?;
                let want = self.mem_want(&expect)?;
                let got = m.host_write(pa, value);
                check_mem_access(want, got)
            }
            Statement::HostFill {
                addr,
                pages,
                byte,
                expect,
            } => {
                let pa = self.pa(&addr)?;
                let pages = self.eval(&pages)?;
                let byte = self.eval(&byte)?;
                let want = self.mem_want(&expect)?;
                let byte = u8::try_from(byte)
                    .map_err(|_| Failure::new("a byte value (0..=0xff)", format!("{byte:#x}")))?;
                let len = pages.checked_mul(PAGE_SIZE).ok_or_else(|| {
                    Failure::new("a page count", format!("{pages:#x}"))
                        .because("fill length does not fit in 64 bits")
                })?;
                let got = m.host_fill(pa, len, byte);
                check_mem_access(want, got)
            }
            Statement::DeviceRead { addr, expect } => {
                let pa = self.pa(&addr)?;
                let want = self.mem_want(&expect)?;
                let got = m
                    .device_read(pa)
                    .map_err(|e| Failure::new(want.show(), "no device").because(e))?;
                match want {
                    MemWant::Value(v) if v != got => {
                        Err(Failure::new(want.show(), format!("{got:#x}")))
                    }
                    _ => Ok(()),
                }
            }
            Statement::DeviceWrite { addr, value } => {
                let pa = self.pa(&addr)?;
                let value = self.eval(&value)?;
                m.device_write(pa, value)
                    .map_err(|e| Failure::new("ok", "no device").because(e))
            }
            Statement::Boot { vm, vcpu, expect } => {
                let (vm, vcpu) = (self.eval(&vm)?, self.eval(&vcpu)?);
                let want = self.guest_want(&expect)?;
                let protected = self.protected.get(&vm).copied().unwrap_or(false);
                let first = m.guest_boot(vm, vcpu, protected);
                self.finish_guest(m, vm, vcpu, OpKind::Boot, want, first)
            }
            Statement::Guest {
                vm,
                vcpu,
                op,
                expect,
            } => {
                let (vm, vcpu) = (self.eval(&vm)?, self.eval(&vcpu)?);
                let (kind, op) = match op {
                    GuestOpSyntax::Read(ipa) => (
                        OpKind::Read,
                        GuestOp::Read {
                            ipa: self.eval(&ipa)?,
                        },
                    ),
                    GuestOpSyntax::Write(ipa, value) => (
                        OpKind::Write,
                        GuestOp::Write {
                            ipa: self.eval(&ipa)?,
                            value: self.eval(&value)?,
                        },
                    ),
                    GuestOpSyntax::Exec(ipa) => (
                        OpKind::Exec,
                        GuestOp::Exec {
                            ipa: self.eval(&ipa)?,
                        },
                    ),
                    GuestOpSyntax::Hvc(func, args) => {
                        let mut regs = [0u64; 7];
                        regs[0] = func.id;
                        for (slot, value) in regs.iter_mut().skip(1).zip(self.eval_all(&args)?) {
                            *slot = value;
                        }
                        (OpKind::Hvc, GuestOp::Hvc { regs })
                    }
                };
                let want = self.guest_want(&expect)?;
                let first = m.guest_op(vm, vcpu, op);
                self.finish_guest(m, vm, vcpu, kind, want, first)
            }
            Statement::Resume {
                vm,
                vcpu,
                mmio_read,
                expect,
            } => {
                let (vm, vcpu) = (self.eval(&vm)?, self.eval(&vcpu)?);
                let data = match mmio_read {
                    Some(e) => self.eval(&e)?,
                    None => 0,
                };
                let want = self.guest_want(&expect)?;
                let kind = self
                    .pending
                    .get(&(vm, vcpu))
                    .copied()
                    .unwrap_or(OpKind::Unknown);
                let first = m.guest_resume(vm, vcpu, data);
                self.finish_guest(m, vm, vcpu, kind, want, first)
            }
        }
    }

    fn source(&mut self, source: Source<'_>, m: &mut dyn Machine) -> Result<u64, Failure> {
        match source {
            Source::Pages(kind, pages) => {
                let pages = self.eval(&pages)?;
                alloc_pages(m, kind, pages)
            }
            Source::Hyp => Ok(m.hyp_pfn()),
            Source::PaLimit => Ok(m.pa_limit_pfn()),
            Source::Value(e) => self.eval(&e),
            Source::Vm { protected, mte } => {
                let mut flags = 0;
                if protected {
                    flags |= vm_flags::PROTECTED;
                }
                if mte {
                    flags |= vm_flags::MTE;
                }
                let meta = alloc_pages(m, PageKind::Ram, VM_CREATE_PAGES)?;
                let handle = host_call(
                    m,
                    HostCallId::VmCreate,
                    [flags, meta, VM_CREATE_PAGES, 0, 0, 0],
                )?[2];
                self.protected.insert(handle, protected);
                let pool = alloc_pages(m, PageKind::Ram, VM_TOPUP_PAGES)?;
                host_call(
                    m,
                    HostCallId::VmTopup,
                    [handle, pool, VM_TOPUP_PAGES, 0, 0, 0],
                )?;
                Ok(handle)
            }
            Source::Vcpu(vm) => {
                let vm = self.eval(&vm)?;
                let run_page = alloc_pages(m, PageKind::Ram, 1)?;
                host_call(m, HostCallId::ShareHyp, [run_page, 1, 0, 0, 0, 0])?;
                let r = host_call(m, HostCallId::VcpuCreate, [vm, run_page, 0, 0, 0, 0])?;
                Ok(r[2])
            }
        }
    }

    /// The physical address of `pfn[@offset]`.
    fn pa(&self, addr: &Addr<'_>) -> Result<u64, Failure> {
        let pfn = self.eval(&addr.pfn)?;
        let offset = match &addr.offset {
            Some(e) => self.eval(e)?,
            None => 0,
        };
        if pfn > u64::MAX >> PAGE_SHIFT {
            return Err(Failure::new("a pfn", format!("{pfn:#x}"))
                .because("its address does not fit in 64 bits"));
        }
        if offset >= PAGE_SIZE {
            return Err(Failure::new(
                format!("a byte offset below {PAGE_SIZE:#x}"),
                format!("{offset:#x}"),
            )
            .because("offset beyond the page"));
        }
        Ok(pfn << PAGE_SHIFT | offset)
    }

    fn mem_want(&self, expect: &MemExpect<'_>) -> Result<MemWant, Failure> {
        Ok(match expect {
            MemExpect::Ok => MemWant::Ok,
            MemExpect::Abort => MemWant::Abort,
            MemExpect::Value(e) => MemWant::Value(self.eval(e)?),
        })
    }

    fn guest_want(&self, expect: &GuestExpect<'_>) -> Result<Want, Failure> {
        Ok(match expect {
            GuestExpect::Ok => Want::Ok,
            GuestExpect::Value(e) => Want::Value(self.eval(e)?),
            GuestExpect::Exit { reason, ipa } => Want::Exit {
                reason: *reason,
                ipa: match ipa {
                    Some(e) => Some(self.eval(e)?),
                    None => None,
                },
            },
            GuestExpect::Errno(e) => Want::Errno(*e),
        })
    }

    /// Resumes through exits the statement does not care about, then
    /// compares the outcome with what the statement wants.
    fn finish_guest(
        &mut self,
        m: &mut dyn Machine,
        vm: u64,
        vcpu: u64,
        kind: OpKind,
        want: Want,
        first: GuestOutcome,
    ) -> Result<(), Failure> {
        let named = match want {
            Want::Exit { reason, .. } => Some(reason),
            _ => None,
        };
        let mut outcome = first;
        let mut resumes = 0;
        while let GuestOutcome::Exit { reason, .. } = outcome {
            if !resumed_transparently(reason, named) {
                break;
            }
            if resumes == MAX_TRANSPARENT_RESUMES {
                return Err(
                    Failure::new(show_want(kind, want), show_outcome(kind, &outcome).0).because(
                        format!("vCPU did not finish after {MAX_TRANSPARENT_RESUMES} resumes"),
                    ),
                );
            }
            resumes += 1;
            outcome = m.guest_resume(vm, vcpu, 0);
        }
        match outcome {
            GuestOutcome::Exit { .. } => {
                self.pending.insert((vm, vcpu), kind);
            }
            GuestOutcome::Done(_) => {
                self.pending.remove(&(vm, vcpu));
            }
            GuestOutcome::CallFailed(_) | GuestOutcome::Error(_) => {}
        }
        if outcome_matches(kind, want, &outcome) {
            return Ok(());
        }
        let (got, message) = show_outcome(kind, &outcome);
        let failure = Failure::new(show_want(kind, want), got);
        Err(match message {
            Some(message) => failure.because(message),
            None => failure,
        })
    }
}

/// Whether an exit is resumed without the statement seeing it. An
/// INTERRUPTED exit can come at any time on real hardware, so it is passed
/// over even when the statement names another exit.
fn resumed_transparently(reason: u64, named: Option<ExitReason>) -> bool {
    let reason = ExitReason::from_u64(reason);
    match named {
        None => matches!(
            reason,
            Some(ExitReason::Wfi | ExitReason::Interrupted | ExitReason::Mmio)
        ),
        Some(named) => reason == Some(ExitReason::Interrupted) && named != ExitReason::Interrupted,
    }
}

fn outcome_matches(kind: OpKind, want: Want, outcome: &GuestOutcome) -> bool {
    match (want, outcome) {
        (Want::Ok, GuestOutcome::Done(v)) => kind != OpKind::Hvc || *v == 0,
        (Want::Value(w), GuestOutcome::Done(v)) => w == *v,
        (Want::Exit { reason, ipa }, GuestOutcome::Exit { reason: r, ipa: i }) => {
            reason.value() == *r && ipa.is_none_or(|w| *i == Some(w))
        }
        (Want::Errno(e), GuestOutcome::CallFailed(r)) => r[0] == 0 && r[1] == e.to_x1(),
        _ => false,
    }
}

/// A guest-call value in SMCCC terms, any other value in hex.
fn show_value(kind: OpKind, v: u64) -> String {
    if kind == OpKind::Hvc {
        match v {
            SMCCC_NOT_SUPPORTED => return String::from("NOT_SUPPORTED"),
            SMCCC_INVALID_PARAMETER => return String::from("INVALID_PARAMETER"),
            _ => {}
        }
    }
    format!("{v:#x}")
}

fn show_exit(reason: u64, ipa: Option<u64>) -> String {
    let mut s = match ExitReason::from_u64(reason) {
        Some(r) => format!("exit {}", r.name()),
        None => format!("exit {reason:#x}"),
    };
    if let Some(ipa) = ipa {
        s.push_str(&format!(" {ipa:#x}"));
    }
    s
}

fn show_want(kind: OpKind, want: Want) -> String {
    match want {
        Want::Ok => String::from("ok"),
        Want::Value(v) => show_value(kind, v),
        Want::Exit { reason, ipa } => show_exit(reason.value(), ipa),
        Want::Errno(e) => String::from(e.name()),
    }
}

/// The outcome as shown after `got`, and a message to add.
fn show_outcome(kind: OpKind, outcome: &GuestOutcome) -> (String, Option<String>) {
    match outcome {
        GuestOutcome::Done(0) if kind == OpKind::Hvc => (String::from("ok"), None),
        GuestOutcome::Done(v) => (show_value(kind, *v), None),
        GuestOutcome::Exit { reason, ipa } => (show_exit(*reason, *ipa), None),
        GuestOutcome::CallFailed(r) => match Errno::from_x1(r[1]) {
            Some(e) if r[0] == 0 => (String::from(e.name()), None),
            _ if r[0] == SMCCC_NOT_SUPPORTED => (
                String::from("NOT_SUPPORTED"),
                Some(String::from("VCPU_RUN failed")),
            ),
            _ => (
                format!("x0={:#x} x1={:#x}", r[0], r[1]),
                Some(String::from("VCPU_RUN failed")),
            ),
        },
        GuestOutcome::Error(message) => (String::from("error"), Some(message.clone())),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MemWant {
    Ok,
    Abort,
    Value(u64),
}

impl MemWant {
    fn show(self) -> String {
        match self {
            MemWant::Ok => String::from("ok"),
            MemWant::Abort => String::from("abort"),
            MemWant::Value(v) => format!("{v:#x}"),
        }
    }
}

fn check_mem_access(want: MemWant, got: Result<(), crate::Abort>) -> Result<(), Failure> {
    match (want, got) {
        (MemWant::Ok, Ok(())) | (MemWant::Abort, Err(_)) => Ok(()),
        (_, got) => Err(Failure::new(
            want.show(),
            if got.is_ok() { "ok" } else { "abort" },
        )),
    }
}

/// x0 = 0 and x1 = 0.
fn succeeded(r: &[u64; 5]) -> bool {
    r[0] == 0 && r[1] == 0
}

fn show_call_expect(expect: CallExpect) -> &'static str {
    match expect {
        CallExpect::Ok => "ok",
        CallExpect::Errno(e) => e.name(),
        CallExpect::NotSupported => "NOT_SUPPORTED",
    }
}

/// `ok`, an errno name, `NOT_SUPPORTED`, or the raw x0 and x1.
fn show_host_result(r: &[u64; 5]) -> String {
    if r[0] == SMCCC_NOT_SUPPORTED {
        return String::from("NOT_SUPPORTED");
    }
    if r[0] == 0 {
        if r[1] == 0 {
            return String::from("ok");
        }
        if let Some(e) = Errno::from_x1(r[1]) {
            return String::from(e.name());
        }
    }
    format!("x0={:#x} x1={:#x}", r[0], r[1])
}

fn alloc_pages(m: &mut dyn Machine, kind: PageKind, pages: u64) -> Result<u64, Failure> {
    m.alloc(kind, pages)
        .map_err(|message| Failure::new("ok", "error").because(message))
}

/// Issues a host call the runner needs to succeed.
fn host_call(m: &mut dyn Machine, call: HostCallId, args: [u64; 6]) -> Result<[u64; 5], Failure> {
    let mut x = [0u64; 7];
    x[0] = u64::from(call.id());
    for (slot, value) in x.iter_mut().skip(1).zip(args) {
        *slot = value;
    }
    let r = m.host_call(x);
    if succeeded(&r) {
        Ok(r)
    } else {
        Err(Failure::new("ok", show_host_result(&r)).because(call.name()))
    }
}

/// The result of HYP_FEATURES: the feature bits, or why they are unknown.
pub(crate) fn hyp_features(m: &mut dyn Machine) -> Result<u64, Failure> {
    host_call(m, HostCallId::HypFeatures, [0; 6]).map(|r| r[2])
}
