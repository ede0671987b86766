//! The guest part of `cargo xtask run` (blob mode `demo`, after the tour):
//! a protected VM runs a small guest program that prints through an MMIO
//! console the host emulates, shares a buffer with the host and keeps a
//! secret the host cannot read.
//!
//! The guest program ([`image`], position-independent EL1 code entered
//! with its MMU off, x0 = the console's IPA) does, in order:
//!
//! 1. MMIO_GUARD (0xC600_0007) of the console IPA, [`CONSOLE_IPA`]: only a
//!    guarded page with nothing mapped gives MMIO exits;
//! 2. writes its greeting there one byte at a time (`strb`): each byte is an
//!    MMIO exit, which the host emulates by printing the byte;
//! 3. writes a secret word into its private page, [`SECRET_IPA`];
//! 4. MEM_SHARE (0xC600_0003) of [`SHARED_IPA`], then copies a note there;
//! 5. PSCI SYSTEM_OFF (0x8400_0008): VCPU_RUN returns SYSTEM_EVENT.
//!
//! If the call in 1 or 4 fails, it reports with an HVC the hypervisor
//! forwards instead ([`DG_FAILED`]: x1 = 1 for MMIO_GUARD, 2 for MEM_SHARE;
//! x2 = the call's x0).
//!
//! The host ([`run`]) narrates every step in the tour's style, one line per
//! check with `[ok]` or `[FAILED]`, counts them in a [`Tally`], and stops
//! at the first failure (what follows depends on it).

use alloc::format;
use alloc::string::String;
use core::arch::global_asm;
use core::fmt::Write;
use core::mem::offset_of;

use host_interface::{
    fault_flags, prot, system_event, vm_flags, ExitReason, HostCallId, RunPage, PAGE_SHIFT,
    PAGE_SIZE,
};
use scenario::{Machine, PageKind, Tally};

use crate::console::Console;
use crate::machine::HostMachine;
use crate::vm::{call, call_ok};
use crate::{access, arch, println, test_guest};

/// IPA of the guest program (its entry point).
pub const CODE_IPA: u64 = 0x4000_0000;
/// IPA of the guest's private page, where it keeps its secret.
pub const SECRET_IPA: u64 = 0x4000_2000;
/// IPA of the page the guest shares with the host.
pub const SHARED_IPA: u64 = 0x4000_3000;
/// IPA of the guest's console (nothing mapped there: MMIO_GUARD makes its
/// accesses MMIO exits). Where QEMU `virt`'s PL011 is, so the guest writes
/// the data register as it would on the board.
pub const CONSOLE_IPA: u64 = 0x0900_0000;
/// Guest-to-host report: a guest call failed; x1 = the step (1 MMIO_GUARD,
/// 2 MEM_SHARE), x2 = the call's x0.
pub const DG_FAILED: u64 = 0xC600_0F02;

/// Pages VM_CREATE gets (its stage-2 root and pool).
const CREATE_PAGES: u64 = 8;
/// Pages VM_TOPUP gets.
const TOPUP_PAGES: u64 = 8;
/// More console bytes than this is a runaway guest.
const MAX_CONSOLE_BYTES: usize = 256;
/// The longest note the host reads from the shared page.
const MAX_NOTE_BYTES: u64 = 256;

global_asm!(
    r#"
.section .rodata.demo_guest, "a"
.balign 4096
.global demo_guest_start
demo_guest_start:
    mov     x19, x0                 // x19: the console's IPA (x0 at entry)
    adr     x20, demo_guest_start   // x20: this page's IPA, 0x4000_0000

    // 1. MMIO_GUARD the console page.
    movz    x0, #0x0007
    movk    x0, #0xc600, lsl #16
    mov     x1, x19
    mov     x2, xzr
    mov     x3, xzr
    hvc     #0
    mov     x1, #1
    cbnz    x0, dg_failed

    // 2. The greeting, one byte per store: one MMIO exit each.
    adr     x9, demo_guest_greeting
1:
    ldrb    w10, [x9], #1
    cbz     w10, 2f
    strb    w10, [x19]
    b       1b
2:

    // 3. The secret, 0x5ec2e7c0de5ec2e7, in the private page (+0x2000).
    movz    x10, #0xc2e7
    movk    x10, #0xde5e, lsl #16
    movk    x10, #0xe7c0, lsl #32
    movk    x10, #0x5ec2, lsl #48
    add     x21, x20, #0x2000
    str     x10, [x21]

    // 4. MEM_SHARE the page at +0x3000, then copy the note there (with its
    //    NUL).
    add     x22, x20, #0x3000
    movz    x0, #0x0003
    movk    x0, #0xc600, lsl #16
    mov     x1, x22
    mov     x2, xzr
    mov     x3, xzr
    hvc     #0
    mov     x1, #2
    cbnz    x0, dg_failed
    adr     x9, demo_guest_note
3:
    ldrb    w10, [x9], #1
    strb    w10, [x22], #1
    cbnz    w10, 3b

    // 5. PSCI SYSTEM_OFF: the run ends with a SYSTEM_EVENT exit.
    movz    x0, #0x0008
    movk    x0, #0x8400, lsl #16
    hvc     #0
    b       .

// A guest call failed (x1 = the step, x0 = its answer): tell the host.
dg_failed:
    mov     x2, x0
    movz    x0, #0x0f02
    movk    x0, #0xc600, lsl #16
    hvc     #0
    b       dg_failed

.global demo_guest_greeting
demo_guest_greeting:
    .asciz  "Hello from a protected guest!\n"
.global demo_guest_note
demo_guest_note:
    .asciz  "a note from the guest"
.balign 8
.global demo_guest_end
demo_guest_end:
"#
);

extern "C" {
    static demo_guest_start: u8;
    static demo_guest_greeting: u8;
    static demo_guest_note: u8;
    static demo_guest_end: u8;
}

/// The guest program, to copy to the start of its code page.
pub fn image() -> &'static [u8] {
    // SAFETY: the two symbols delimit the assembled program above in
    // read-only data; the bytes are never written.
    unsafe {
        let start = &raw const demo_guest_start;
        let end = &raw const demo_guest_end;
        core::slice::from_raw_parts(start, end as usize - start as usize)
    }
}

/// The NUL-terminated string at `at` inside [`image`].
fn image_str(at: *const u8) -> &'static str {
    let code = image();
    let from = (at as usize).wrapping_sub(code.as_ptr() as usize);
    let rest = code.get(from..).unwrap_or_default();
    let text = rest.split(|&b| b == 0).next().unwrap_or_default();
    core::str::from_utf8(text).unwrap_or_default()
}

/// What the guest writes to its console.
pub fn greeting() -> &'static str {
    image_str(&raw const demo_guest_greeting)
}

/// What the guest leaves in the page it shares.
pub fn note() -> &'static str {
    image_str(&raw const demo_guest_note)
}

/// A step failed: the demonstration stops there.
struct Stop;

/// The narration: one line per check, and their tally.
#[derive(Default)]
struct Narrator {
    tally: Tally,
}

impl Narrator {
    /// A check: `label` with `[ok]`, or with `[FAILED]` and why.
    fn step<T>(&mut self, label: &str, outcome: Result<T, String>) -> Result<T, Stop> {
        match outcome {
            Ok(v) => {
                self.tally.passed = self.tally.passed.saturating_add(1);
                println!("    {label:<56} [ok]");
                Ok(v)
            }
            Err(why) => {
                self.tally.failed = self.tally.failed.saturating_add(1);
                println!("    {label:<56} [FAILED]");
                println!("guest demo: {label}: {why}");
                Err(Stop)
            }
        }
    }
}

/// The host's console device for the guest: prints each byte as it comes,
/// a line at a time behind `guest console: `; control and non-ASCII bytes
/// are shown as `?` (the guest does not get to drive the host's terminal).
#[derive(Default)]
struct GuestConsole {
    /// What the guest wrote, as bytes.
    text: String,
    /// Whether a line is open (its prefix printed, no newline yet).
    open: bool,
}

impl GuestConsole {
    fn put(&mut self, byte: u8) {
        if !self.open {
            let _ = Console.write_str("guest console: ");
            self.open = true;
        }
        match byte {
            b'\n' => {
                let _ = Console.write_str("\n");
                self.open = false;
            }
            0x20..=0x7e => {
                let _ = Console.write_char(char::from(byte));
            }
            _ => {
                let _ = Console.write_char('?');
            }
        }
        self.text.push(char::from(byte));
    }

    /// End an open line.
    fn finish(&mut self) {
        if self.open {
            let _ = Console.write_str("\n");
            self.open = false;
        }
    }
}

/// `pages` pages of free RAM for the VM, from the tour's allocator (nothing
/// is handed out twice).
fn ram(m: &mut HostMachine, pages: u64) -> Result<u64, String> {
    m.alloc(PageKind::Ram, pages)
}

/// Byte address of page `pfn`.
fn pa(pfn: u64) -> u64 {
    pfn << PAGE_SHIFT
}

/// The guest's pages, filled: the program at the start of `code`, the data
/// pages zero; cleaned to the point of coherency (the guest starts with its
/// MMU off).
fn install(code: u64, data: u64) -> Result<(), String> {
    if image().len() as u64 > PAGE_SIZE {
        return Err("the guest program does not fit in a page".into());
    }
    let fail = |_| String::from("the host cannot write the guest's pages");
    access::fill(pa(code), PAGE_SIZE, 0).map_err(fail)?;
    test_guest::copy_code(pa(code), image()).map_err(fail)?;
    access::fill(pa(data), 2 * PAGE_SIZE, 0).map_err(fail)?;
    arch::dcache_clean(pa(code) as usize, (pa(code) + PAGE_SIZE) as usize);
    arch::dcache_clean(pa(data) as usize, (pa(data) + 2 * PAGE_SIZE) as usize);
    Ok(())
}

/// A run page field.
fn field(run: u64, off: usize) -> u64 {
    access::read(pa(run) + off as u64).unwrap_or(u64::MAX)
}

/// An exit the demonstration did not expect, in words.
fn unexpected(r: [u64; 5], run: u64) -> String {
    if r[0] != 0 || r[1] != 0 {
        return format!("VCPU_RUN answered x0 {:#x} x1 {:#x}", r[0], r[1]);
    }
    let args = offset_of!(RunPage, hvc_args);
    match ExitReason::from_u64(r[2]) {
        Some(ExitReason::Hvc) if field(run, args) == DG_FAILED => {
            let call = match field(run, args + 8) {
                1 => "MMIO_GUARD",
                2 => "MEM_SHARE",
                _ => "a call",
            };
            let x0 = field(run, args + 16) as i64;
            let meaning = match x0 {
                -1 => " (NOT_SUPPORTED)",
                -3 => " (INVALID_PARAMETER)",
                _ => "",
            };
            format!("the guest's {call} answered {x0}{meaning}")
        }
        Some(ExitReason::Mmio | ExitReason::MemFault) => format!(
            "exit {} at IPA {:#x} (flags {:#x}, size {})",
            ExitReason::from_u64(r[2]).map_or("?", |e| e.name()),
            field(run, offset_of!(RunPage, fault_ipa)),
            field(run, offset_of!(RunPage, fault_flags)),
            field(run, offset_of!(RunPage, fault_size)),
        ),
        Some(e) => format!("exit {} ({})", e.name(), r[2]),
        None => format!("unknown exit {:#x}", r[2]),
    }
}

/// The pages the host gave the VM.
struct Pages {
    meta: u64,
    pool: u64,
    run: u64,
    code: u64,
    data: u64,
}

/// Narrate the guest demonstration; the checks' tally.
pub fn run(m: &mut HostMachine) -> Tally {
    let mut n = Narrator::default();
    println!("-- 6. A protected guest: its console, a shared buffer, a secret --");
    let _ = demo(&mut n, m);
    n.tally
}

fn demo(n: &mut Narrator, m: &mut HostMachine) -> Result<(), Stop> {
    use HostCallId as C;
    println!("The host copies a small guest program into a page (code), takes two more");
    println!("(data: a private page, then one to share), creates a protected VM with a");
    println!("vCPU, and donates the pages: code at IPA {CODE_IPA:#x}, data at {SECRET_IPA:#x}.");
    let (code, data) = n.step(
        "host copies the guest program to page code",
        ram(m, 1).and_then(|code| {
            let data = ram(m, 2)?;
            install(code, data)?;
            Ok((code, data))
        }),
    )?;
    let meta = ram(m, CREATE_PAGES);
    let (meta, vm) = n.step(
        "call VM_CREATE PROTECTED meta 8 -> ok",
        meta.and_then(|meta| {
            let r = call_ok(C::VmCreate, &[vm_flags::PROTECTED, meta, CREATE_PAGES])?;
            Ok((meta, r[2]))
        }),
    )?;
    let pool = n.step(
        "call VM_TOPUP guest pool 8 -> ok",
        ram(m, TOPUP_PAGES).and_then(|pool| {
            call_ok(C::VmTopup, &[vm, pool, TOPUP_PAGES])?;
            Ok(pool)
        }),
    )?;
    let run = n.step(
        "call SHARE_HYP run 1 -> ok",
        ram(m, 1).and_then(|run| {
            access::fill(pa(run), PAGE_SIZE, 0)
                .map_err(|_| String::from("cannot clear the run page"))?;
            call_ok(C::ShareHyp, &[run, 1])?;
            Ok(run)
        }),
    )?;
    let vcpu = n.step(
        "call VCPU_CREATE guest run -> ok",
        call_ok(C::VcpuCreate, &[vm, run]).map(|r| r[2]),
    )?;
    let p = Pages {
        meta,
        pool,
        run,
        code,
        data,
    };
    n.step(
        "call GUEST_DONATE guest code 0x40000 1 RX -> ok",
        call_ok(
            C::GuestDonate,
            &[vm, code, CODE_IPA >> PAGE_SHIFT, 1, prot::R | prot::X],
        ),
    )?;
    n.step(
        "call GUEST_DONATE guest data 0x40002 2 RW -> ok",
        call_ok(
            C::GuestDonate,
            &[vm, data, SECRET_IPA >> PAGE_SHIFT, 2, prot::R | prot::W],
        ),
    )?;
    let entry = [
        (offset_of!(RunPage, entry), CODE_IPA),
        (offset_of!(RunPage, x0), CONSOLE_IPA),
    ];
    for (off, v) in entry {
        if access::write(pa(run) + off as u64, v).is_err() {
            return n.step("host writes the run page", Err("abort".into()));
        }
    }

    println!("The guest registers IPA {CONSOLE_IPA:#x} as MMIO (MMIO_GUARD), its console, and");
    println!("writes a greeting there a byte at a time. Each byte is an MMIO exit; the host");
    println!("emulates the console and prints it:");
    let mut console = GuestConsole::default();
    let last = loop {
        let r = call(C::VcpuRun, &[vm, vcpu]);
        // The hypervisor's time slice may end any run: run it again.
        if r == [0, 0, ExitReason::Interrupted as u64, 0, 0] {
            continue;
        }
        if r != [0, 0, ExitReason::Mmio as u64, 0, 0] {
            break r;
        }
        let ipa = field(run, offset_of!(RunPage, fault_ipa));
        let flags = field(run, offset_of!(RunPage, fault_flags));
        let size = field(run, offset_of!(RunPage, fault_size));
        if ipa != CONSOLE_IPA || flags != fault_flags::WRITE || size != 1 {
            break r;
        }
        console.put(field(run, offset_of!(RunPage, fault_data)) as u8);
        if console.text.len() > MAX_CONSOLE_BYTES {
            break r;
        }
    };
    console.finish();
    let writes = console.text.len();
    let outcome = if last == [0, 0, ExitReason::Mmio as u64, 0, 0] {
        Err(if writes > MAX_CONSOLE_BYTES {
            format!("more than {MAX_CONSOLE_BYTES} console bytes")
        } else {
            unexpected(last, run)
        })
    } else if writes == 0 {
        Err(unexpected(last, run))
    } else if console.text != greeting() {
        Err(format!(
            "the console got {:?}, not the guest's greeting {:?}; then {}",
            console.text,
            greeting(),
            unexpected(last, run)
        ))
    } else {
        Ok(())
    };
    n.step(
        &format!("call VCPU_RUN guest {vcpu} -> MMIO, {writes} times (1-byte writes)"),
        outcome,
    )?;

    println!("Then it writes a secret into its private page ({SECRET_IPA:#x}), shares");
    println!("{SHARED_IPA:#x} (MEM_SHARE), leaves a note there and powers off (SYSTEM_OFF):");
    let event = field(run, offset_of!(RunPage, system_event));
    let outcome = if last == [0, 0, ExitReason::SystemEvent as u64, 0, 0] {
        if event == system_event::OFF {
            Ok(())
        } else {
            Err(format!("SYSTEM_EVENT of type {event}, not SYSTEM_OFF (0)"))
        }
    } else {
        Err(unexpected(last, run))
    };
    n.step(
        &format!("call VCPU_RUN guest {vcpu} -> SYSTEM_EVENT (SYSTEM_OFF)"),
        outcome,
    )?;

    println!("The host reads the shared page, but not the private one: an abort is");
    println!("injected, and the host carries on.");
    let buffer = data + 1;
    n.step(
        "call PAGE_QUERY data+1 -> ok x2=2 x3=2 x4=0",
        expect_query(buffer, [2, 2, 0]),
    )?;
    // The guest wrote with its MMU off: drop any stale line of the host's.
    arch::dcache_clean_invalidate(pa(buffer) as usize, (pa(buffer) + PAGE_SIZE) as usize);
    let text = read_note(pa(buffer));
    let label = match &text {
        Ok(t) => format!("host reads the shared buffer: {t:?}"),
        Err(_) => String::from("host reads the shared buffer"),
    };
    n.step(
        &label,
        text.and_then(|t| {
            if t == note() {
                Ok(())
            } else {
                Err(format!("expected {:?}", note()))
            }
        }),
    )?;
    n.step(
        "call PAGE_QUERY data -> ok x2=2 x3=3 x4=0",
        expect_query(data, [2, 3, 0]),
    )?;
    n.step(
        "host reads the guest's private page: abort",
        match access::read(pa(data)) {
            Err(_) => Ok(()),
            Ok(v) => Err(format!("the host read {v:#x}")),
        },
    )?;

    teardown(n, vm, &p)
}

/// VM_DESTROY, RECLAIM of every page the VM had, the run page back: the
/// guest's pages read back as zeros.
fn teardown(n: &mut Narrator, vm: u64, p: &Pages) -> Result<(), Stop> {
    use HostCallId as C;
    println!("Teardown: the guest's pages come back to the host scrubbed.");
    n.step("call VM_DESTROY guest -> ok", call_ok(C::VmDestroy, &[vm]))?;
    n.step(
        "call RECLAIM code 1 -> ok",
        call_ok(C::Reclaim, &[p.code, 1]),
    )?;
    n.step(
        "call RECLAIM data 2 -> ok",
        call_ok(C::Reclaim, &[p.data, 2]),
    )?;
    n.step(
        "call RECLAIM meta 8 -> ok",
        call_ok(C::Reclaim, &[p.meta, CREATE_PAGES]),
    )?;
    n.step(
        "call RECLAIM pool 8 -> ok",
        call_ok(C::Reclaim, &[p.pool, TOPUP_PAGES]),
    )?;
    n.step(
        "call UNSHARE_HYP run 1 -> ok",
        call_ok(C::UnshareHyp, &[p.run, 1]),
    )?;
    let mut outcome = Ok(());
    for at in (0..2 * PAGE_SIZE).step_by(8) {
        match access::read(pa(p.data) + at) {
            Ok(0) => {}
            Ok(v) => {
                outcome = Err(format!("{v:#x} at byte {at:#x}"));
                break;
            }
            Err(_) => {
                outcome = Err(format!("abort at byte {at:#x}"));
                break;
            }
        }
    }
    n.step(
        "host reads the private and shared pages: all zeros",
        outcome,
    )?;
    Ok(())
}

/// PAGE_QUERY of `pfn` must answer owner, host state and class `want`.
fn expect_query(pfn: u64, want: [u64; 3]) -> Result<(), String> {
    let r = call_ok(HostCallId::PageQuery, &[pfn])?;
    if r[2..] == want {
        Ok(())
    } else {
        Err(format!("x2={} x3={} x4={}", r[2], r[3], r[4]))
    }
}

/// The NUL-terminated text at `at`, read 8 bytes at a time.
fn read_note(at: u64) -> Result<String, String> {
    let mut text = String::new();
    for off in (0..MAX_NOTE_BYTES).step_by(8) {
        let word = access::read(at + off).map_err(|_| format!("abort at byte {off:#x}"))?;
        for b in word.to_le_bytes() {
            if b == 0 {
                return Ok(text);
            }
            text.push(if (0x20..=0x7e).contains(&b) {
                char::from(b)
            } else {
                '?'
            });
        }
    }
    Err(format!("no NUL in the first {MAX_NOTE_BYTES} bytes"))
}
