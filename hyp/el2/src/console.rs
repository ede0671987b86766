//! The PL011 console (polled). The hypervisor prints only at boot and when it
//! must stop, so a lock around the UART is enough.

use core::fmt::{self, Write};
use core::ptr::NonNull;

use arm_pl011_uart::{PL011Registers, Uart, UniqueMmioPointer};
use spin::mutex::SpinMutex;

static CONSOLE: SpinMutex<Option<Uart<'static>>> = SpinMutex::new(None);

/// Use the PL011 at `base` (QEMU has already set it up).
pub fn init(base: usize) {
    let Some(ptr) = NonNull::new(base as *mut PL011Registers) else {
        return;
    };
    // SAFETY: `base` is the PL011's register block (from the device tree /
    // the board constants), mapped as device memory for EL2; this is the only
    // pointer to it the hypervisor creates.
    let regs = unsafe { UniqueMmioPointer::new(ptr) };
    *CONSOLE.lock() = Some(Uart::new(regs));
}

struct Crlf<'a, 'b>(&'a mut Uart<'b>);

impl Write for Crlf<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.0.write_word(b'\r');
            }
            self.0.write_word(b);
        }
        Ok(())
    }
}

/// Print to the console (nothing before `init`).
pub fn print(args: fmt::Arguments) {
    if let Some(uart) = CONSOLE.lock().as_mut() {
        let _ = Crlf(uart).write_fmt(args);
    }
}

/// `println!` for EL2.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => { $crate::console::print(format_args!("{}\n", format_args!($($arg)*))) };
}
