//! virtio-mmio devices (virtio 1.2, section 4.2: the MMIO transport,
//! version 2) on the rust-vmm `virtio-queue` crate.
//!
//! [`MmioTransport`] holds the transport registers and the queues; each
//! device model ([`console::Console`], [`block::Block`]) implements
//! [`VirtioDevice`]: its identity, features, configuration space, and what
//! a notification of one of its queues does. Devices run their queues
//! synchronously in the vCPU thread that wrote QueueNotify; the caller
//! raises the device's interrupt when [`MmioTransport::write`] says so.

pub mod block;
pub mod console;

use virtio_bindings::virtio_config::{VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_mmio::{
    VIRTIO_MMIO_CONFIG_GENERATION, VIRTIO_MMIO_DEVICE_FEATURES, VIRTIO_MMIO_DEVICE_FEATURES_SEL,
    VIRTIO_MMIO_DEVICE_ID, VIRTIO_MMIO_DRIVER_FEATURES, VIRTIO_MMIO_DRIVER_FEATURES_SEL,
    VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INTERRUPT_STATUS, VIRTIO_MMIO_MAGIC_VALUE,
    VIRTIO_MMIO_QUEUE_AVAIL_HIGH, VIRTIO_MMIO_QUEUE_AVAIL_LOW, VIRTIO_MMIO_QUEUE_DESC_HIGH,
    VIRTIO_MMIO_QUEUE_DESC_LOW, VIRTIO_MMIO_QUEUE_NOTIFY, VIRTIO_MMIO_QUEUE_NUM,
    VIRTIO_MMIO_QUEUE_NUM_MAX, VIRTIO_MMIO_QUEUE_READY, VIRTIO_MMIO_QUEUE_SEL,
    VIRTIO_MMIO_QUEUE_USED_HIGH, VIRTIO_MMIO_QUEUE_USED_LOW, VIRTIO_MMIO_STATUS,
    VIRTIO_MMIO_VENDOR_ID, VIRTIO_MMIO_VERSION,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

/// The size of one device's MMIO window.
pub const MMIO_SIZE: u64 = 0x200;
/// Where the configuration space starts in the window.
const CONFIG_OFFSET: u64 = 0x100;
/// "virt", little-endian.
const MAGIC: u64 = 0x7472_6976;
/// A vendor ID for the devices ("PKVM" is not registered; any value works).
const VENDOR: u64 = 0x4d56_4b50;
/// Device status bits (virtio 1.2, 2.1).
const STATUS_FAILED: u32 = 128;
/// InterruptStatus bit: a used buffer was added.
const INT_USED_RING: u32 = 1;

/// Guest memory as the devices see it.
pub type Memory = GuestMemoryMmap<()>;

/// A device model behind a virtio-mmio transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID (virtio 1.2, 5).
    fn device_id(&self) -> u32;
    /// Device feature bits beyond VIRTIO_F_VERSION_1 (which all offer).
    fn features(&self) -> u64;
    /// The maximum size of each queue; the length is the number of queues.
    fn queue_sizes(&self) -> &[u16];
    /// Reads `size` bytes of the configuration space at `off`.
    fn read_config(&self, off: u64, size: u8) -> u64;
    /// Serves a notification of queue `index`; returns true when it put
    /// buffers in the used ring (the driver is to be interrupted).
    fn process(&mut self, index: usize, queue: &mut Queue, mem: &Memory) -> bool;
}

/// The virtio-mmio registers of one device and its queues.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    queues: Vec<Queue>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    interrupt_status: u32,
    /// Offer VIRTIO_F_ACCESS_PLATFORM: the driver must reach memory
    /// through its DMA API (a protected guest's bounce pool).
    access_platform: bool,
}

impl MmioTransport {
    /// A transport for `device`, reset.
    pub fn new(device: Box<dyn VirtioDevice>) -> Result<Self, virtio_queue::Error> {
        let queues = device
            .queue_sizes()
            .iter()
            .map(|&n| Queue::new(n))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            device,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            interrupt_status: 0,
            access_platform: false,
        })
    }

    /// The transport of a protected VM's device: it also offers
    /// VIRTIO_F_ACCESS_PLATFORM, without which a guest puts private
    /// addresses in its rings instead of using its restricted DMA pool
    /// (docs/PKVM_GUEST.md, section 4).
    pub fn with_access_platform(mut self) -> Self {
        self.access_platform = true;
        self
    }

    fn all_features(&self) -> u64 {
        let platform = u64::from(self.access_platform) << VIRTIO_F_ACCESS_PLATFORM;
        self.device.features() | (1 << VIRTIO_F_VERSION_1) | platform
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn reset(&mut self) {
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt_status = 0;
    }

    /// A read of `size` bytes at offset `off` of the window.
    pub fn read(&mut self, off: u64, size: u8) -> u64 {
        if off >= CONFIG_OFFSET {
            return self.device.read_config(off - CONFIG_OFFSET, size);
        }
        let sel = self.queue_sel as usize;
        match off as u32 {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => 2,
            VIRTIO_MMIO_DEVICE_ID => u64::from(self.device.device_id()),
            VIRTIO_MMIO_VENDOR_ID => VENDOR,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.all_features() & 0xffff_ffff,
                1 => self.all_features() >> 32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => {
                self.queues.get(sel).map_or(0, |q| u64::from(q.max_size()))
            }
            VIRTIO_MMIO_QUEUE_READY => self.queues.get(sel).map_or(0, |q| u64::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => u64::from(self.interrupt_status),
            VIRTIO_MMIO_STATUS => u64::from(self.status),
            VIRTIO_MMIO_CONFIG_GENERATION => 0,
            _ => 0,
        }
    }

    /// A write at offset `off`; returns true when the device is to
    /// interrupt the driver.
    pub fn write(&mut self, off: u64, value: u64, mem: &Memory) -> bool {
        let v = value as u32;
        match off as u32 {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES => {
                let shift = match self.driver_features_sel {
                    0 => 0,
                    1 => 32,
                    _ => return false,
                };
                let mask = 0xffff_ffffu64 << shift;
                let offered = self.all_features() & mask;
                self.driver_features =
                    (self.driver_features & !mask) | ((u64::from(v) << shift) & offered);
            }
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = v,
            VIRTIO_MMIO_QUEUE_NUM => {
                if let Some(q) = self.selected() {
                    q.set_size(v as u16);
                }
            }
            VIRTIO_MMIO_QUEUE_READY => {
                if let Some(q) = self.selected() {
                    q.set_ready(v == 1);
                }
            }
            VIRTIO_MMIO_QUEUE_DESC_LOW => self
                .selected()
                .map_or((), |q| q.set_desc_table_address(Some(v), None)),
            VIRTIO_MMIO_QUEUE_DESC_HIGH => self
                .selected()
                .map_or((), |q| q.set_desc_table_address(None, Some(v))),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => self
                .selected()
                .map_or((), |q| q.set_avail_ring_address(Some(v), None)),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => self
                .selected()
                .map_or((), |q| q.set_avail_ring_address(None, Some(v))),
            VIRTIO_MMIO_QUEUE_USED_LOW => self
                .selected()
                .map_or((), |q| q.set_used_ring_address(Some(v), None)),
            VIRTIO_MMIO_QUEUE_USED_HIGH => self
                .selected()
                .map_or((), |q| q.set_used_ring_address(None, Some(v))),
            VIRTIO_MMIO_QUEUE_NOTIFY => {
                let index = v as usize;
                let Some(q) = self.queues.get_mut(index) else {
                    return false;
                };
                if !q.ready() || self.status & STATUS_FAILED != 0 {
                    return false;
                }
                if self.device.process(index, q, mem) {
                    self.interrupt_status |= INT_USED_RING;
                    return true;
                }
            }
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt_status &= !v,
            VIRTIO_MMIO_STATUS => {
                if v == 0 {
                    self.reset();
                } else {
                    self.status = v;
                }
            }
            _ => {}
        }
        false
    }
}

/// Reads `size` bytes at `off` of a configuration space held as bytes.
pub fn config_bytes(space: &[u8], off: u64, size: u8) -> u64 {
    (0..u64::from(size)).fold(0, |acc, i| {
        let b = usize::try_from(off + i)
            .ok()
            .and_then(|k| space.get(k))
            .copied()
            .unwrap_or(0);
        acc | (u64::from(b) << (8 * i))
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    /// A small guest memory and a helper to build a split virtqueue in it
    /// as a driver would: descriptor table at 0x1000, available ring at
    /// 0x2000, used ring at 0x3000.
    pub(crate) struct Driver {
        pub mem: Memory,
        next: u16,
    }

    impl Driver {
        pub(crate) fn new() -> Self {
            let mem = Memory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
            Self { mem, next: 0 }
        }

        pub(crate) fn setup(&self, t: &mut MmioTransport, queue: u32) {
            let w = |t: &mut MmioTransport, off: u32, v: u64| t.write(u64::from(off), v, &self.mem);
            w(t, VIRTIO_MMIO_STATUS, 1 | 2);
            w(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
            w(t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
            w(t, VIRTIO_MMIO_STATUS, 1 | 2 | 8);
            w(t, VIRTIO_MMIO_QUEUE_SEL, u64::from(queue));
            w(t, VIRTIO_MMIO_QUEUE_NUM, 16);
            w(t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1000);
            w(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x2000);
            w(t, VIRTIO_MMIO_QUEUE_USED_LOW, 0x3000);
            w(t, VIRTIO_MMIO_QUEUE_READY, 1);
            w(t, VIRTIO_MMIO_STATUS, 1 | 2 | 8 | 4);
        }

        /// Makes a chain of (address, length, device-writable) buffers
        /// available; returns its head.
        pub(crate) fn offer(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
            let head = self.next;
            for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
                let idx = self.next;
                self.next += 1;
                let more = i + 1 < bufs.len();
                let flags: u16 = u16::from(more) | if writable { 2 } else { 0 };
                let d = 0x1000 + 16 * u64::from(idx);
                self.mem.write_obj(addr, GuestAddress(d)).unwrap();
                self.mem.write_obj(len, GuestAddress(d + 8)).unwrap();
                self.mem.write_obj(flags, GuestAddress(d + 12)).unwrap();
                self.mem
                    .write_obj(if more { idx + 1 } else { 0 }, GuestAddress(d + 14))
                    .unwrap();
            }
            let avail_idx: u16 = self.mem.read_obj(GuestAddress(0x2002)).unwrap();
            self.mem
                .write_obj(head, GuestAddress(0x2004 + 2 * u64::from(avail_idx % 16)))
                .unwrap();
            self.mem
                .write_obj(avail_idx + 1, GuestAddress(0x2002))
                .unwrap();
            head
        }

        /// The used ring's index and its last entry (id, len).
        pub(crate) fn used(&self) -> (u16, u32, u32) {
            let idx: u16 = self.mem.read_obj(GuestAddress(0x3002)).unwrap();
            let e = 0x3004 + 8 * u64::from((idx + 15) % 16);
            (
                idx,
                self.mem.read_obj(GuestAddress(e)).unwrap(),
                self.mem.read_obj(GuestAddress(e + 4)).unwrap(),
            )
        }
    }

    #[test]
    fn transport_identifies_and_negotiates() {
        let d = Driver::new();
        let mut t =
            MmioTransport::new(Box::new(console::Console::new(Box::new(Vec::new())))).unwrap();
        assert_eq!(t.read(0, 4), MAGIC);
        assert_eq!(t.read(4, 4), 2);
        assert_eq!(t.read(8, 4), 3);
        t.write(u64::from(VIRTIO_MMIO_DEVICE_FEATURES_SEL), 1, &d.mem);
        assert_eq!(t.read(u64::from(VIRTIO_MMIO_DEVICE_FEATURES), 4), 1);
        assert_eq!(t.read(u64::from(VIRTIO_MMIO_QUEUE_NUM_MAX), 4), 256);
        d.setup(&mut t, 1);
        assert_eq!(t.read(u64::from(VIRTIO_MMIO_QUEUE_READY), 4), 1);
        t.write(u64::from(VIRTIO_MMIO_STATUS), 0, &d.mem);
        assert_eq!(t.read(u64::from(VIRTIO_MMIO_QUEUE_READY), 4), 0);
        assert_eq!(t.read(u64::from(VIRTIO_MMIO_STATUS), 4), 0);
    }

    #[test]
    fn protected_transport_offers_access_platform() {
        let d = Driver::new();
        let mut t = MmioTransport::new(Box::new(console::Console::new(Box::new(Vec::new()))))
            .unwrap()
            .with_access_platform();
        t.write(u64::from(VIRTIO_MMIO_DEVICE_FEATURES_SEL), 1, &d.mem);
        // Bit 32 (VERSION_1) and bit 33 (ACCESS_PLATFORM).
        assert_eq!(t.read(u64::from(VIRTIO_MMIO_DEVICE_FEATURES), 4), 0b11);
        t.write(u64::from(VIRTIO_MMIO_DRIVER_FEATURES_SEL), 1, &d.mem);
        t.write(u64::from(VIRTIO_MMIO_DRIVER_FEATURES), 0b11, &d.mem);
        assert_eq!(t.driver_features, 0b11 << 32);
    }
}
