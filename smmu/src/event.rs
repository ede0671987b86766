//! Event records (SMMUv3 spec 7.3 "Event records"): 32 bytes, four
//! doublewords. Only the fields the hypervisor reports are decoded.

/// Doublewords in one event record.
pub const EVENT_WORDS: usize = 4;

/// One event the SMMU recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// Event type (bits \[7:0\]).
    pub id: u8,
    /// StreamID of the transaction.
    pub sid: u32,
    /// Input address of the transaction (translation and permission
    /// faults; 0 for other events).
    pub addr: u64,
    /// Whether the transaction was a read (RnW).
    pub read: bool,
}

impl Event {
    /// Decode a record. Every bit pattern decodes (the record comes from a
    /// device, and its fields are only reported).
    pub fn decode(w: &[u64; EVENT_WORDS]) -> Self {
        Self {
            id: w[0] as u8,
            sid: (w[0] >> 32) as u32,
            addr: w[2],
            read: w[1] & (1 << 35) != 0,
        }
    }

    /// Whether this is a translation, address-size, access or permission
    /// fault: a transaction the stage-2 refused.
    pub fn is_translation_fault(&self) -> bool {
        matches!(self.id, 0x10..=0x13)
    }

    /// The event's name in the specification.
    pub fn name(&self) -> &'static str {
        match self.id {
            0x01 => "F_UUT",
            0x02 => "C_BAD_STREAMID",
            0x03 => "F_STE_FETCH",
            0x04 => "C_BAD_STE",
            0x05 => "F_BAD_ATS_TREQ",
            0x06 => "F_STREAM_DISABLED",
            0x07 => "F_TRANSL_FORBIDDEN",
            0x08 => "C_BAD_SUBSTREAMID",
            0x09 => "F_CD_FETCH",
            0x0A => "C_BAD_CD",
            0x0B => "F_WALK_EABT",
            0x10 => "F_TRANSLATION",
            0x11 => "F_ADDR_SIZE",
            0x12 => "F_ACCESS",
            0x13 => "F_PERMISSION",
            0x20 => "F_TLB_CONFLICT",
            0x21 => "F_CFG_CONFLICT",
            0x24 => "E_PAGE_REQUEST",
            0x25 => "F_VMS_FETCH",
            _ => "unknown event",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translation_fault() {
        let e = Event::decode(&[0x0000_0008_0000_0010, 1 << 35, 0x4500_0000, 0x4500_0000]);
        assert_eq!(e.id, 0x10);
        assert_eq!(e.sid, 8);
        assert_eq!(e.addr, 0x4500_0000);
        assert!(e.read);
        assert!(e.is_translation_fault());
        assert_eq!(e.name(), "F_TRANSLATION");
        let junk = Event::decode(&[u64::MAX; 4]);
        assert_eq!(junk.name(), "unknown event");
        assert!(!junk.is_translation_fault());
    }
}
