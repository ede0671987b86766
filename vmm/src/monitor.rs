//! `--monitor FIFO`: a small command channel into a running VMM, for
//! tests and diagnostics. The VMM reads one command per line from the
//! named pipe (reopening it whenever the writer closes it) and answers
//! each on standard output with one line starting `vmm monitor: `:
//!
//! - `peek IPA`: reads the u64 at IPA through the VMM's own window on the
//!   protected VM's memory (the VM file's mmap(), as the devices reach the
//!   DMA pool). A page the guest has not shared is SIGBUS; the VMM catches
//!   it (a SA_SIGINFO handler that skips the faulting load) and answers
//!   `SIGBUS` instead of dying.
//! - `query IPA`: the driver's PKVM_RS_GUEST_PAGE: the host frame holding
//!   the guest's page and the hypervisor's PAGE_QUERY of it.
//! - `count-shared IPA PAGES`: of the PAGES pages from IPA, how many the
//!   driver donated and how many of those the guest shared back with
//!   MEM_SHARE (PAGE_QUERY host state SHARED_BORROWED), by
//!   PKVM_RS_GUEST_PAGE on each.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
#[cfg(target_arch = "aarch64")]
use std::sync::atomic::Ordering;
use std::sync::Once;

use crate::uapi;

/// PAGE_QUERY host state: the host may access a page the guest shared.
const HOST_SHARED_BORROWED: u32 = 2;

/// Starts the monitor's thread on `fifo`, for the VM file `vm`.
pub fn start(fifo: PathBuf, vm: OwnedFd) -> io::Result<()> {
    std::thread::Builder::new()
        .name("monitor".into())
        .spawn(move || loop {
            // Blocks until a writer opens the pipe.
            let Ok(f) = File::open(&fifo) else {
                println!("vmm monitor: cannot open {}", fifo.display());
                return;
            };
            for line in BufReader::new(f).lines() {
                let Ok(line) = line else { break };
                if !line.trim().is_empty() {
                    println!("vmm monitor: {}", answer(vm.as_raw_fd(), line.trim()));
                }
            }
        })
        .map(|_| ())
}

/// The answer to one command line.
fn answer(vm: RawFd, line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let usage = || format!("{line}: expected `peek IPA`, `query IPA` or `count-shared IPA PAGES`");
    let numbers: Option<Vec<u64>> = words.iter().skip(1).map(|w| parse_u64(w)).collect();
    let Some(numbers) = numbers else {
        return format!("{line}: not a number");
    };
    match (words.first().copied(), numbers.as_slice()) {
        (Some("peek"), &[ipa]) => match peek(vm, ipa) {
            Ok(Some(v)) => format!("peek {ipa:#x}: {v:#018x}"),
            Ok(None) => format!("peek {ipa:#x}: SIGBUS (the host may not read this page)"),
            Err(e) => format!("peek {ipa:#x}: error: {e}"),
        },
        (Some("query"), &[ipa]) => match query(vm, ipa) {
            Ok(i) => format!(
                "query {ipa:#x}: pfn {:#x} owner {} host_state {} mem_class {}",
                i.pfn, i.owner, i.host_state, i.mem_class
            ),
            Err(e) => format!("query {ipa:#x}: error: {e}"),
        },
        (Some("count-shared"), &[ipa, pages]) => {
            let (mut donated, mut shared) = (0u64, 0u64);
            for k in 0..pages {
                if let Ok(i) = query(vm, ipa.saturating_add(k << 12)) {
                    donated += 1;
                    shared += u64::from(i.host_state == HOST_SHARED_BORROWED);
                }
            }
            format!(
                "count-shared {ipa:#x} {pages}: {donated} donated, {shared} shared with the host"
            )
        }
        (Some("peek" | "query" | "count-shared"), _) => usage(),
        (Some(cmd), _) => format!("{line}: unknown command `{cmd}`"),
        (None, _) => usage(),
    }
}

/// A number in decimal or 0x-hexadecimal.
pub fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// PKVM_RS_GUEST_PAGE of `ipa`.
fn query(vm: RawFd, ipa: u64) -> io::Result<uapi::PageInfo> {
    let mut info = uapi::PageInfo {
        ipa,
        ..Default::default()
    };
    // SAFETY: GUEST_PAGE takes a pointer to a live PageInfo, whose layout
    // uapi.rs checks against the header.
    let r = unsafe { libc::ioctl(vm, uapi::GUEST_PAGE as _, &mut info as *mut uapi::PageInfo) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}

/// Reads the u64 at `ipa` through a fresh mapping of the VM file:
/// `Ok(None)` when the access was a SIGBUS.
fn peek(vm: RawFd, ipa: u64) -> io::Result<Option<u64>> {
    let page = ipa & !0xfff;
    let offset =
        libc::off_t::try_from(page).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a new shared read-only mapping of one page of the VM file;
    // the kernel picks the address.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            4096,
            libc::PROT_READ,
            libc::MAP_SHARED,
            vm,
            offset,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let at = p
        .cast::<u8>()
        .wrapping_add((ipa & 0xff8) as usize)
        .cast::<u64>();
    let v = guarded_load(at);
    // SAFETY: the mapping made above, no longer used.
    unsafe { libc::munmap(p, 4096) };
    v
}

/// The address the monitor is loading from, while it does (0: none).
static PEEKING: AtomicUsize = AtomicUsize::new(0);
static HANDLER: Once = Once::new();

/// SIGBUS: if it is the monitor's load at [`PEEKING`], skip the load
/// (one instruction) and flag it in x11; anything else gets the default
/// action (the process dies, as it would have without this handler).
#[cfg(target_arch = "aarch64")]
extern "C" fn on_sigbus(_: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo and ucontext to an
    // SA_SIGINFO handler, for the duration of the handler.
    unsafe {
        let addr = (*info).si_addr() as usize;
        let peeking = PEEKING.load(Ordering::SeqCst);
        if peeking != 0 && addr == peeking {
            let uc = ctx.cast::<libc::ucontext_t>();
            (*uc).uc_mcontext.regs[11] = 1;
            (*uc).uc_mcontext.pc += 4;
        } else {
            libc::signal(libc::SIGBUS, libc::SIG_DFL);
        }
    }
}

#[cfg(target_arch = "aarch64")]
fn guarded_load(p: *const u64) -> io::Result<Option<u64>> {
    let mut err = Ok(());
    HANDLER.call_once(|| {
        // SAFETY: a zeroed sigaction is valid; the handler only touches
        // the signal's own context and an atomic.
        unsafe {
            let mut sa: libc::sigaction = core::mem::zeroed();
            sa.sa_sigaction = on_sigbus as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(libc::SIGBUS, &sa, core::ptr::null_mut()) != 0 {
                err = Err(io::Error::last_os_error());
            }
        }
    });
    err?;
    PEEKING.store(p as usize, Ordering::SeqCst);
    let value: u64;
    let faulted: u64;
    // SAFETY: one load from a mapping of the VM file that stays mapped
    // across it; a SIGBUS there is caught by `on_sigbus`, which skips
    // exactly this instruction and sets x11.
    unsafe {
        core::arch::asm!(
            "mov x11, xzr",
            "ldr x10, [{p}]",
            p = in(reg) p,
            out("x10") value,
            out("x11") faulted,
            options(nostack, readonly),
        );
    }
    PEEKING.store(0, Ordering::SeqCst);
    Ok((faulted == 0).then_some(value))
}

#[cfg(not(target_arch = "aarch64"))]
fn guarded_load(_: *const u64) -> io::Result<Option<u64>> {
    let _ = (&PEEKING, &HANDLER);
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "peek is implemented for arm64 only",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_parsed() {
        assert_eq!(parse_u64("0x8000f000"), Some(0x8000_f000));
        assert_eq!(parse_u64("4096"), Some(4096));
        assert_eq!(parse_u64("0xzz"), None);
        assert!(answer(-1, "peek").contains("expected"));
        assert!(answer(-1, "peek 1 2").contains("expected"));
        assert!(answer(-1, "poke 0x1000").contains("unknown command"));
        assert!(answer(-1, "query x").contains("not a number"));
        assert!(answer(-1, "count-shared 0x1000").contains("expected"));
        // Nothing donated behind a bad file descriptor.
        assert!(answer(-1, "count-shared 0x1000 2").contains("0 donated, 0 shared"));
        // A bad file descriptor: the driver's errors come back as text.
        assert!(answer(-1, "query 0x1000").contains("error"));
    }
}
