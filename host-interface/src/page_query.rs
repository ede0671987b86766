//! The three answers of PAGE_QUERY (ABI.md 1, "Fields"): owner in x2, host
//! state in x3, memory class in x4.

wire_enum! {
    /// Who owns a page (PAGE_QUERY x2).
    pub enum Owner: u64 {
        /// The host.
        Host = 0 => "HOST",
        /// The hypervisor.
        Hyp = 1 => "HYP",
        /// Some guest (which one is not reported).
        Guest = 2 => "GUEST",
        /// Nobody: the page is reclaimable.
        None = 3 => "NONE",
    }
}

wire_enum! {
    /// The page's state in the host's stage-2 (PAGE_QUERY x3).
    pub enum HostState: u64 {
        /// Owned by the host, shared with nobody.
        Owned = 0 => "OWNED",
        /// Owned by the host and shared with the hypervisor or guests.
        SharedOwned = 1 => "SHARED_OWNED",
        /// Owned by someone else, the host has shared access.
        SharedBorrowed = 2 => "SHARED_BORROWED",
        /// The host has no access.
        NoPage = 3 => "NOPAGE",
    }
}

wire_enum! {
    /// The page's memory class, fixed at boot (PAGE_QUERY x4; RULES.md,
    /// "Memory classes").
    pub enum MemClassCode: u64 {
        /// The host's RAM.
        Ram = 0 => "RAM",
        /// Device memory (every address that is no other class).
        Mmio = 1 => "MMIO",
        /// Cacheable-capable device memory.
        Coherent = 2 => "COHERENT",
        /// The hypervisor's own memory.
        Hyp = 3 => "HYP",
    }
}
