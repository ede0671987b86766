//! `guest-secret DEVICE SECTOR WORD`: run by a protected guest's `/init`
//! (xtask/src/pvm.rs). It locks one private page in memory, fills it with
//! a pattern, prints `GUEST SECRET ipa=0x...` (the page's guest-physical
//! address, from /proc/self/pagemap), then waits until sector SECTOR of
//! the block device DEVICE starts with WORD (the host writes it there
//! when it has finished trying to read the page), and checks the pattern
//! is still there. Exit status 0: the page held its pattern throughout.
//!
//! The wait reads the sector with O_DIRECT, so each poll reaches the
//! device (the VMM, which serves it from the disk image file the host
//! writes into) rather than the guest's page cache. It has no timeout:
//! the test's own time limit ends a run that never gets its go-ahead.

#![deny(clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::process::ExitCode;
use std::time::Duration;

const PAGE: usize = 4096;
/// The pattern's words: a tag and the word's index.
const TAG: u64 = 0x5EC2_E700_0000_0000;

fn pattern(i: usize) -> u64 {
    TAG | i as u64
}

/// One private anonymous page, mapped and locked.
struct LockedPage(*mut u64);

impl LockedPage {
    fn new() -> io::Result<Self> {
        // SAFETY: a fresh private anonymous mapping; the kernel picks the
        // address and nothing else refers to it.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `p` is the page just mapped.
        if unsafe { libc::mlock(p, PAGE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(p.cast()))
    }

    fn words(&mut self) -> &mut [u64] {
        // SAFETY: the mapping is one page of u64s, readable and writable,
        // alive as long as `self`, and reached only through `self`.
        unsafe { core::slice::from_raw_parts_mut(self.0, PAGE / 8) }
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: as in `words`.
        unsafe { core::slice::from_raw_parts_mut(self.0.cast(), PAGE) }
    }

    fn addr(&self) -> usize {
        self.0 as usize
    }
}

/// The guest-physical address of the page at virtual address `va`
/// (/proc/self/pagemap: bit 63 present, bits 0..=54 the frame number).
fn physical(va: usize) -> Result<u64, String> {
    let f = File::open("/proc/self/pagemap").map_err(|e| format!("/proc/self/pagemap: {e}"))?;
    let mut entry = [0u8; 8];
    f.read_exact_at(&mut entry, (va / PAGE * 8) as u64)
        .map_err(|e| format!("/proc/self/pagemap: {e}"))?;
    let entry = u64::from_le_bytes(entry);
    let pfn = entry & ((1 << 55) - 1);
    if entry >> 63 == 0 || pfn == 0 {
        return Err(format!(
            "the page is not present (pagemap entry {entry:#x})"
        ));
    }
    Ok(pfn * PAGE as u64)
}

fn run(args: &[String]) -> Result<bool, String> {
    let [device, sector, word] = args else {
        return Err("usage: guest-secret DEVICE SECTOR WORD".into());
    };
    let sector: u64 = sector
        .parse()
        .map_err(|_| format!("SECTOR {sector}: not a number"))?;
    let mut secret = LockedPage::new().map_err(|e| format!("the secret's page: {e}"))?;
    for (i, w) in secret.words().iter_mut().enumerate() {
        *w = pattern(i);
    }
    let ipa = physical(secret.addr())?;
    println!(
        "GUEST SECRET ipa={ipa:#x} pattern {:#018x}.. locked, waiting for the host",
        pattern(0)
    );
    let _ = io::stdout().flush();

    // O_DIRECT wants an aligned buffer: a page of its own.
    let mut buffer = LockedPage::new().map_err(|e| format!("a buffer: {e}"))?;
    let disk = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(device)
        .map_err(|e| format!("{device}: {e}"))?;
    let mut polls = 0u64;
    loop {
        let b = &mut buffer.bytes()[..512];
        disk.read_exact_at(b, sector * 512)
            .map_err(|e| format!("{device} sector {sector}: {e}"))?;
        if b.starts_with(word.as_bytes()) {
            break;
        }
        polls += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    let changed = secret
        .words()
        .iter()
        .enumerate()
        .filter(|&(i, &w)| w != pattern(i))
        .count();
    println!(
        "GUEST SECRET go-ahead after {polls} polls; the page holds its pattern: {}",
        if changed == 0 {
            "intact".to_string()
        } else {
            format!("{changed} words changed")
        }
    );
    Ok(changed == 0)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            println!("GUEST SECRET error: {e}");
            ExitCode::from(2)
        }
    }
}
