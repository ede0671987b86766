//! virtio block device (virtio 1.2, 5.2) on a disk image file: reads,
//! writes and flushes of 512-byte sectors, one request queue.

use std::fs::File;
use std::os::unix::fs::FileExt;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::{config_bytes, Memory, VirtioDevice};

/// virtio device ID of a block device.
const DEVICE_ID: u32 = 2;
/// VIRTIO_BLK_F_FLUSH.
const F_FLUSH: u64 = 1 << 9;
const SECTOR: u64 = 512;

/// Request types (virtio 1.2, 5.2.6).
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
/// Request status values.
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;

/// A block device backed by a file.
pub struct Block {
    file: File,
    sectors: u64,
}

impl Block {
    /// A device for `file`, whose size (rounded down to whole sectors) is
    /// the disk's capacity.
    pub fn new(file: File) -> std::io::Result<Self> {
        let sectors = file.metadata()?.len() / SECTOR;
        Ok(Self { file, sectors })
    }

    /// Serves one request; returns its status and the bytes written into
    /// the driver's buffers.
    fn request(
        &self,
        mem: &Memory,
        header: GuestAddress,
        data: &[(GuestAddress, u32, bool)],
    ) -> (u8, u32) {
        let Ok(kind) = mem.read_obj::<u32>(header) else {
            return (S_IOERR, 0);
        };
        let Ok(sector) = mem.read_obj::<u64>(GuestAddress(header.0.wrapping_add(8))) else {
            return (S_IOERR, 0);
        };
        match kind {
            T_IN | T_OUT => {
                let mut offset = sector.saturating_mul(SECTOR);
                let mut written = 0u32;
                for &(addr, len, device_writes) in data {
                    let len64 = u64::from(len);
                    if offset.saturating_add(len64) > self.sectors * SECTOR
                        || device_writes != (kind == T_IN)
                    {
                        return (S_IOERR, written);
                    }
                    let mut buf = vec![0u8; len as usize];
                    let ok = if kind == T_IN {
                        self.file.read_exact_at(&mut buf, offset).is_ok()
                            && mem.write_slice(&buf, addr).is_ok()
                    } else {
                        mem.read_slice(&mut buf, addr).is_ok()
                            && self.file.write_all_at(&buf, offset).is_ok()
                    };
                    if !ok {
                        return (S_IOERR, written);
                    }
                    if kind == T_IN {
                        written = written.saturating_add(len);
                    }
                    offset += len64;
                }
                (S_OK, written)
            }
            T_FLUSH => (
                if self.file.sync_data().is_ok() {
                    S_OK
                } else {
                    S_IOERR
                },
                0,
            ),
            _ => (S_UNSUPP, 0),
        }
    }
}

impl VirtioDevice for Block {
    fn device_id(&self) -> u32 {
        DEVICE_ID
    }

    fn features(&self) -> u64 {
        F_FLUSH
    }

    fn queue_sizes(&self) -> &[u16] {
        &[256]
    }

    fn read_config(&self, off: u64, size: u8) -> u64 {
        // capacity (in 512-byte sectors) is the only field we offer.
        config_bytes(&self.sectors.to_le_bytes(), off, size)
    }

    fn process(&mut self, index: usize, queue: &mut Queue, mem: &Memory) -> bool {
        if index != 0 {
            return false;
        }
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let descs: Vec<_> = chain
                .map(|d| (d.addr(), d.len(), d.is_write_only()))
                .collect();
            // A request: a readable header, data buffers, a writable status
            // byte last.
            let (status, written) = match descs.as_slice() {
                [(header, hlen, false), data @ .., (status_addr, slen, true)]
                    if *hlen >= 16 && *slen >= 1 =>
                {
                    let (s, n) = self.request(mem, *header, data);
                    let ok = mem.write_obj(s, *status_addr).is_ok();
                    (ok, n.saturating_add(1))
                }
                _ => (false, 0),
            };
            let _ = status;
            if queue.add_used(mem, head, written).is_err() {
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
    use std::io::{Read, Seek, SeekFrom, Write};

    fn disk() -> File {
        let mut f = tempfile();
        f.write_all(&vec![0xAB; 4096]).unwrap();
        f
    }

    fn tempfile() -> File {
        let path = std::env::temp_dir().join(format!(
            "vmm-block-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let _ = std::fs::remove_file(&path);
        f
    }

    #[test]
    fn capacity_is_in_sectors() {
        let b = Block::new(disk()).unwrap();
        assert_eq!(b.read_config(0, 8), 8);
        assert_eq!(b.read_config(4, 4), 0);
    }

    #[test]
    fn write_then_read_back_through_the_queue() {
        let f = disk();
        let mut d = Driver::new();
        let mut t =
            MmioTransport::new(Box::new(Block::new(f.try_clone().unwrap()).unwrap())).unwrap();
        d.setup(&mut t, 0);
        // OUT of 512 bytes at sector 2.
        d.mem.write_obj(T_OUT, GuestAddress(0x8000)).unwrap();
        d.mem.write_obj(2u64, GuestAddress(0x8008)).unwrap();
        d.mem
            .write_slice(&[0x5A; 512], GuestAddress(0x9000))
            .unwrap();
        d.offer(&[(0x8000, 16, false), (0x9000, 512, false), (0xA000, 1, true)]);
        assert!(t.write(0x50, 0, &d.mem));
        assert_eq!(d.mem.read_obj::<u8>(GuestAddress(0xA000)).unwrap(), S_OK);
        let mut g = f.try_clone().unwrap();
        let mut back = vec![0; 512];
        g.seek(SeekFrom::Start(1024)).unwrap();
        g.read_exact(&mut back).unwrap();
        assert!(back.iter().all(|&b| b == 0x5A));
        // IN of sectors 1..3 into a writable buffer.
        d.mem.write_obj(T_IN, GuestAddress(0x8000)).unwrap();
        d.mem.write_obj(1u64, GuestAddress(0x8008)).unwrap();
        let head = d.offer(&[(0x8000, 16, false), (0xB000, 1024, true), (0xA000, 1, true)]);
        assert!(t.write(0x50, 0, &d.mem));
        assert_eq!(d.used(), (2, u32::from(head), 1025));
        let mut got = vec![0; 1024];
        d.mem.read_slice(&mut got, GuestAddress(0xB000)).unwrap();
        assert!(got[..512].iter().all(|&b| b == 0xAB) && got[512..].iter().all(|&b| b == 0x5A));
        // Beyond the end: IOERR; unknown type: UNSUPP.
        d.mem.write_obj(8u64, GuestAddress(0x8008)).unwrap();
        d.offer(&[(0x8000, 16, false), (0xB000, 512, true), (0xA000, 1, true)]);
        t.write(0x50, 0, &d.mem);
        assert_eq!(d.mem.read_obj::<u8>(GuestAddress(0xA000)).unwrap(), S_IOERR);
        d.mem.write_obj(99u32, GuestAddress(0x8000)).unwrap();
        d.offer(&[(0x8000, 16, false), (0xA000, 1, true)]);
        t.write(0x50, 0, &d.mem);
        assert_eq!(
            d.mem.read_obj::<u8>(GuestAddress(0xA000)).unwrap(),
            S_UNSUPP
        );
    }
}
