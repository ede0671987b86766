//! virtio console (virtio 1.2, 5.3), output only: one port, whose
//! transmit queue goes to a writer (the VMM's standard output). Nothing is
//! ever offered on the receive queue.

use std::io::Write;

use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;

use super::{config_bytes, Memory, VirtioDevice};

/// virtio device ID of a console.
const DEVICE_ID: u32 = 3;
/// Queue 0 receives, queue 1 transmits.
const TRANSMITQ: usize = 1;

/// A console device writing what the guest sends to `out`.
pub struct Console {
    out: Box<dyn Write + Send>,
}

impl Console {
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self { out }
    }
}

impl VirtioDevice for Console {
    fn device_id(&self) -> u32 {
        DEVICE_ID
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_sizes(&self) -> &[u16] {
        &[256, 256]
    }

    fn read_config(&self, off: u64, size: u8) -> u64 {
        // cols, rows, max_nr_ports, emerg_wr: no size, one port.
        config_bytes(&[0; 12], off, size)
    }

    fn process(&mut self, index: usize, queue: &mut Queue, mem: &Memory) -> bool {
        if index != TRANSMITQ {
            return false;
        }
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            for d in chain.readable() {
                let mut buf = vec![0u8; d.len() as usize];
                if mem.read_slice(&mut buf, d.addr()).is_ok() {
                    // The console is best effort: a closed stdout loses
                    // output but does not stop the guest.
                    let _ = self.out.write_all(&buf);
                }
            }
            let _ = self.out.flush();
            if queue.add_used(mem, head, 0).is_err() {
                break;
            }
            used = true;
        }
        used
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::Driver;
    use super::super::MmioTransport;
    use super::*;
    use std::sync::{Arc, Mutex};
    use vm_memory::GuestAddress;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmitted_bytes_reach_the_writer() {
        let out = Shared::default();
        let mut d = Driver::new();
        let mut t = MmioTransport::new(Box::new(Console::new(Box::new(out.clone())))).unwrap();
        d.setup(&mut t, 1);
        d.mem.write_slice(b"hello ", GuestAddress(0x8000)).unwrap();
        d.mem.write_slice(b"guest\n", GuestAddress(0x9000)).unwrap();
        let head = d.offer(&[(0x8000, 6, false), (0x9000, 6, false)]);
        assert!(t.write(0x50, 1, &d.mem));
        assert_eq!(&out.0.lock().unwrap()[..], b"hello guest\n");
        assert_eq!(d.used(), (1, u32::from(head), 0));
        assert_eq!(t.read(0x60, 4), 1);
        t.write(0x64, 1, &d.mem);
        assert_eq!(t.read(0x60, 4), 0);
        // A notification of the receive queue does nothing.
        assert!(!t.write(0x50, 0, &d.mem));
    }
}
