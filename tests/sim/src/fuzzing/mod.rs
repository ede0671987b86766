//! The fuzz targets' logic, as plain library code: `fuzz/` (cargo-fuzz,
//! libFuzzer) calls one function per target with the fuzzer's bytes, and
//! the regression tests (`tests/sim/tests/regressions.rs`) call the same
//! functions with inputs that once failed. Every target returns
//! `Err(why)` when an oracle fails; the fuzz wrapper turns that into a
//! panic, which libFuzzer reports as a crash and saves.
//!
//! | target | what it drives | oracle |
//! |---|---|---|
//! | [`host_calls`] | sequences of host calls (biased toward live handles, real pfns and gfns), host reads/writes/execs anywhere, guest boots and guest accesses through the simulator's test guest | I1–I4 on the real tables after every step, I5 after every RECLAIM, "a failed call changed nothing", no panic |
//! | [`guest_exits`] | guests trapping with arbitrary registers, IPAs and syndromes, a hostile host rewriting the run page between runs | the same invariants, exits well formed, no panic |
//! | [`decode`] | host-call decode, guest-call IDs, run-page reads, interrupt requests, prot bits | never panics; decode∘encode is the identity |
//! | [`platform`] | device trees (mutations of QEMU's) and boot manifests | errors, never a panic; what is accepted is self-consistent |

pub mod corpus;
pub mod decode;
pub mod guest_exits;
pub mod host_calls;
pub mod input;
pub mod oracle;
pub mod platform;

/// The CPU models a fuzz input can choose (its first byte, modulo 4): the
/// four `cargo xtask test` runs scenarios on, which between them switch
/// FWB, DIC, IDC and MTE on and off.
pub const MODELS: [&str; 4] = ["cortex-a57", "cortex-a710", "neoverse-v1", "max"];

/// Host-pool pages beyond the core's reservation on the fuzz targets'
/// boards ([`crate::SimMachine::with_spare_pool`]): far more than an input's
/// faults on untracked MMIO can take.
pub const FUZZ_SPARE_POOL: u64 = 128;

/// Every fuzz target by name, for `cargo xtask fuzz` and the corpus tests.
pub const TARGETS: [(&str, Target); 5] = [
    ("host_calls", host_calls::run),
    ("guest_exits", guest_exits::run),
    ("decode", decode::run),
    ("device_tree", platform::device_tree),
    ("manifest", platform::manifest),
];

/// One target: the fuzzer's bytes in, `Err(why)` when an oracle failed.
pub type Target = fn(&[u8]) -> Result<(), String>;

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|&(_, t)| t)
}
