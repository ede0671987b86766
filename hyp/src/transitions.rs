//! The table of allowed page transitions (RULES.md, "Ownership"): the one
//! source of truth for which host-side state each call accepts. The core's
//! precondition checks read it ([`host_may`]), and `docs/TRANSITIONS.md` is
//! rendered from it (a test keeps the two equal).

use alloc::string::String;
use core::fmt::Write;

/// What a page is from the host's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostState {
    /// Host OWNED (mapped or not yet faulted in).
    Owned,
    /// Host SHARED_OWNED with the hypervisor (hyp SHARED_BORROWED).
    SharedHyp,
    /// Host SHARED_OWNED with one or more guests (share count > 0).
    SharedGuests,
    /// Host SHARED_BORROWED: a guest shared its page with the host.
    Borrowed,
    /// Host NOPAGE, owned by the hypervisor.
    HypOwned,
    /// Host NOPAGE, owned by a guest.
    GuestOwned,
    /// Host NOPAGE, owned by nobody: waiting for RECLAIM.
    Reclaimable,
}

impl HostState {
    fn name(self) -> &'static str {
        match self {
            Self::Owned => "host OWNED",
            Self::SharedHyp => "host SHARED_OWNED with the hypervisor",
            Self::SharedGuests => "host SHARED_OWNED with guests",
            Self::Borrowed => "host SHARED_BORROWED",
            Self::HypOwned => "hyp OWNED, host NOPAGE",
            Self::GuestOwned => "guest OWNED, host NOPAGE",
            Self::Reclaimable => "reclaimable (owner none)",
        }
    }
}

/// A host-side transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// SHARE_HYP.
    ShareHyp,
    /// UNSHARE_HYP.
    UnshareHyp,
    /// VM_CREATE and VM_TOPUP: pages become the hypervisor's.
    DonateHyp,
    /// VCPU_CREATE: the run page is pinned.
    PinRunPage,
    /// GUEST_SHARE.
    GuestShare,
    /// GUEST_DONATE.
    GuestDonate,
    /// GUEST_MAP_DEVICE into a protected VM.
    MapDeviceProtected,
    /// GUEST_MAP_DEVICE into a normal VM.
    MapDeviceNormal,
    /// RECLAIM.
    Reclaim,
}

/// One row: the call, the host states it accepts, the state it leaves.
pub struct Row {
    /// The transition.
    pub op: Op,
    /// The call's name as in ABI.md.
    pub call: &'static str,
    /// Host states a page may be in; any other is -EPERM.
    pub from: &'static [HostState],
    /// The host state afterwards.
    pub to: HostState,
}

use HostState::*;

/// The host-side transitions of RULES.md.
pub const TABLE: &[Row] = &[
    Row {
        op: Op::ShareHyp,
        call: "SHARE_HYP",
        from: &[Owned],
        to: SharedHyp,
    },
    Row {
        op: Op::UnshareHyp,
        call: "UNSHARE_HYP",
        from: &[SharedHyp],
        to: Owned,
    },
    Row {
        op: Op::DonateHyp,
        call: "VM_CREATE, VM_TOPUP",
        from: &[Owned],
        to: HypOwned,
    },
    Row {
        op: Op::PinRunPage,
        call: "VCPU_CREATE (run page)",
        from: &[SharedHyp],
        to: SharedHyp,
    },
    Row {
        op: Op::GuestShare,
        call: "GUEST_SHARE",
        from: &[Owned, SharedGuests],
        to: SharedGuests,
    },
    Row {
        op: Op::GuestDonate,
        call: "GUEST_DONATE",
        from: &[Owned],
        to: GuestOwned,
    },
    Row {
        op: Op::MapDeviceProtected,
        call: "GUEST_MAP_DEVICE, protected VM",
        from: &[Owned],
        to: GuestOwned,
    },
    Row {
        op: Op::MapDeviceNormal,
        call: "GUEST_MAP_DEVICE, normal VM",
        from: &[Owned, SharedGuests],
        to: SharedGuests,
    },
    Row {
        op: Op::Reclaim,
        call: "RECLAIM",
        from: &[Reclaimable],
        to: Owned,
    },
];

/// Whether `op` accepts a page in host state `s`.
pub fn host_may(op: Op, s: HostState) -> bool {
    TABLE.iter().any(|r| r.op == op && r.from.contains(&s))
}

/// The guest-side transitions (a guest's own stage-2), for the docs.
pub const GUEST_TABLE: &[(&str, &str, &str)] = &[
    ("GUEST_SHARE", "gfn NOPAGE", "guest SHARED_BORROWED"),
    ("GUEST_DONATE", "gfn NOPAGE", "guest OWNED"),
    (
        "GUEST_MAP_DEVICE, protected VM",
        "gfn NOPAGE",
        "guest OWNED",
    ),
    (
        "GUEST_MAP_DEVICE, normal VM",
        "gfn NOPAGE",
        "guest SHARED_BORROWED",
    ),
    ("GUEST_UNSHARE", "guest SHARED_BORROWED of RAM", "NOPAGE"),
    (
        "GUEST_UNMAP_DEVICE",
        "normal VM, guest SHARED_BORROWED of device memory",
        "NOPAGE",
    ),
    (
        "guest MEM_SHARE",
        "guest OWNED RAM",
        "guest SHARED_OWNED, host SHARED_BORROWED",
    ),
    (
        "guest MEM_UNSHARE",
        "guest SHARED_OWNED",
        "guest OWNED, host NOPAGE",
    ),
    (
        "guest MMIO_GUARD",
        "NOPAGE (or already registered)",
        "NOPAGE, registered as MMIO",
    ),
];

/// The tables as Markdown (docs/TRANSITIONS.md).
pub fn render_markdown() -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Page transitions\n");
    let _ = writeln!(
        s,
        "Generated from `hyp/src/transitions.rs`, the table the core checks \
         every request against (a test keeps this file equal to it).\n"
    );
    let _ = writeln!(
        s,
        "## Host side\n\n| call | host state before | after |\n|---|---|---|"
    );
    for r in TABLE {
        let from: alloc::vec::Vec<&str> = r.from.iter().map(|s| s.name()).collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} |",
            r.call,
            from.join(", or "),
            r.to.name()
        );
    }
    let _ = writeln!(
        s,
        "\n## Guest side\n\n| call | before | after |\n|---|---|---|"
    );
    for (c, b, a) in GUEST_TABLE {
        let _ = writeln!(s, "| {c} | {b} | {a} |");
    }
    let _ = writeln!(
        s,
        "\nAny other state is -EPERM (host calls) or INVALID_PARAMETER (guest calls). \
         Error precedence is ABI.md 3.1."
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `host_may` is the table: a call accepts exactly the states of its
    /// row, and no other row's states leak into it.
    #[test]
    fn host_may_reads_the_row_of_its_own_call() {
        assert!(host_may(Op::Reclaim, Reclaimable));
        assert!(!host_may(Op::Reclaim, Owned), "Owned is other rows' state");
        assert!(host_may(Op::GuestDonate, Owned));
        assert!(!host_may(Op::GuestDonate, Reclaimable));
        // Every state the table names, as a source or as a result.
        let states = TABLE
            .iter()
            .flat_map(|r| r.from.iter().copied().chain([r.to]));
        for r in TABLE {
            for s in states.clone() {
                assert_eq!(host_may(r.op, s), r.from.contains(&s), "{} {s:?}", r.call);
            }
        }
    }
}
