//! The console: a PL011 UART written by polling, `\n` sent as `\r\n`.
//!
//! Stateless apart from the UART's address and whether the last byte ended
//! a line, so it works before the MMU is on (device accesses need no
//! mapping then) and from a panic in any state. Only the boot CPU prints.

use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Data register.
const UARTDR: usize = 0x00;
/// Flag register.
const UARTFR: usize = 0x18;
/// UARTFR: transmit FIFO full.
const FR_TXFF: u32 = 1 << 5;

static BASE: AtomicUsize = AtomicUsize::new(platform::qemu_virt::UART_BASE as usize);
static AT_LINE_START: AtomicBool = AtomicBool::new(true);

/// Use the PL011 at `base` from now on (the board's is the default).
pub fn set_base(base: usize) {
    BASE.store(base, Ordering::Relaxed);
}

/// Whether the last byte printed ended a line (or nothing was printed).
pub fn at_line_start() -> bool {
    AT_LINE_START.load(Ordering::Relaxed)
}

fn put(byte: u8) {
    let base = BASE.load(Ordering::Relaxed);
    // SAFETY: `base` is the PL011's register block (the board constant or
    // the device tree's), identity mapped as device memory once the MMU is
    // on; FR and DR are 32-bit registers, read and written whole. Nothing
    // else in the program touches the UART.
    unsafe {
        let fr = (base + UARTFR) as *const u32;
        while fr.read_volatile() & FR_TXFF != 0 {}
        ((base + UARTDR) as *mut u32).write_volatile(u32::from(byte));
    }
}

/// A handle to the console; `write!` to it.
pub struct Console;

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                put(b'\r');
            }
            put(b);
        }
        if let Some(&last) = s.as_bytes().last() {
            AT_LINE_START.store(last == b'\n', Ordering::Relaxed);
        }
        Ok(())
    }
}

/// `println!` to the console.
#[macro_export]
macro_rules! println {
    () => {
        $crate::println!("")
    };
    ($($arg:tt)*) => {{
        let _ = core::fmt::Write::write_fmt(
            &mut $crate::console::Console,
            format_args!("{}\n", format_args!($($arg)*)),
        );
    }};
}
