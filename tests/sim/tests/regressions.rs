//! The fuzz targets' inputs as ordinary tests: every seed in
//! `fuzz/corpus/<target>/` and every input that once made a target fail,
//! kept in `fuzz/regressions/<target>/` (named after what it found), must
//! pass its target's oracle. The targets are `sim::fuzzing`; `cargo xtask
//! fuzz` runs them under libFuzzer.

use std::path::{Path, PathBuf};

use sim::fuzzing::{target, TARGETS};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs every file under `dir/<target>/`; returns how many ran.
fn run_dir(dir: &str) -> usize {
    let mut ran = 0;
    for (name, run) in TARGETS {
        let Ok(entries) = std::fs::read_dir(root().join(dir).join(name)) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            if let Err(e) = run(&data) {
                panic!("{name} on {}: {e}", f.display());
            }
            ran += 1;
        }
    }
    ran
}

#[test]
fn every_seed_passes() {
    let ran = run_dir("fuzz/corpus");
    assert!(ran >= 100, "only {ran} seeds in fuzz/corpus");
}

#[test]
fn every_saved_failure_passes() {
    run_dir("fuzz/regressions");
}

#[test]
fn every_target_has_seeds() {
    for (name, _) in TARGETS {
        let dir = root().join("fuzz/corpus").join(name);
        let n = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        assert!(n > 0, "no seeds in {}", dir.display());
        assert!(target(name).is_some());
    }
}

// The oracles themselves: each must be able to fail.

use host_interface::HostCallId;
use scenario::Machine;
use sim::fuzzing::oracle::{scrubbed, Scope, Snapshot};
use sim::SimMachine;

#[test]
fn snapshot_sees_a_state_change_and_nothing_else() {
    let mut m = SimMachine::with_spare_pool("max", 128).unwrap();
    let ram = m.hyp().platform().host_ram().next().unwrap().0 >> 12;
    let frames = [ram, ram + 1, 0x10];
    let before = Snapshot::take(m.hyp_mut(), &frames);
    // A failing call (nr = 0 is -EINVAL) leaves everything as it was.
    let r = m.call(HostCallId::ShareHyp, &[ram, 0]);
    assert_ne!(r[1], 0);
    assert_eq!(
        before.unchanged(&Snapshot::take(m.hyp_mut(), &frames)),
        Ok(())
    );
    // A successful one changes the host's stage-2 (here first its pool:
    // the page's 2 MiB block is split into tables).
    let r = m.call(HostCallId::ShareHyp, &[ram, 1]);
    assert_eq!(&r[..2], &[0, 0]);
    let e = before
        .unchanged(&Snapshot::take(m.hyp_mut(), &frames))
        .unwrap_err();
    assert!(e.starts_with("host pool 6"), "{e}");
    // A VM's creation changes the host pool's view and the VM list.
    let snap = Snapshot::take(m.hyp_mut(), &[]);
    let r = m.call(HostCallId::VmCreate, &[0, ram + 8, 4]);
    assert_eq!(&r[..2], &[0, 0]);
    assert!(snap.unchanged(&Snapshot::take(m.hyp_mut(), &[])).is_err());
}

#[test]
fn scrub_check_sees_a_dirty_page() {
    let m = SimMachine::with_spare_pool("max", 128).unwrap();
    let ram = m.hyp().platform().host_ram().next().unwrap().0;
    assert_eq!(scrubbed(m.phys(), ram >> 12, 2), Ok(()));
    hyp::phys::write_u64(m.phys(), ram + 4096 + 4088, 1);
    let e = scrubbed(m.phys(), ram >> 12, 2).unwrap_err();
    assert!(e.contains("word 511"), "{e}");
}

#[test]
fn scope_is_windows_of_tracked_memory() {
    let mut m = SimMachine::with_spare_pool("max", 128).unwrap();
    let tracked = sim::tracked_ranges(m.hyp().platform());
    let ram = m.hyp().platform().host_ram().next().unwrap().0 >> 12;
    let mut scope = Scope::new(m.hyp());
    let initial = scope.ranges.clone();
    for &(s, _) in &tracked {
        assert!(initial.iter().any(|&(a, n)| a <= s && s < a + n));
    }
    // A HYP page or a pfn beyond the PA space adds nothing.
    scope.add(m.hyp_pfn(), 1);
    scope.add(u64::MAX - 3, 8);
    assert_eq!(scope.ranges, initial);
    // A RAM page far in adds its 2 MiB window, merged and sorted.
    let far = ram + 0x8000 + 5;
    scope.add(far, 1);
    scope.add(far + 1, 1);
    assert!(
        scope.ranges.contains(&(far - 5, 512)),
        "{:x?}",
        scope.ranges
    );
    assert_eq!(scope.ranges.len(), initial.len() + 1);
}

/// `fuzz/regressions/host_calls/fill-end-overflow`: a host fill at the top
/// of the address space computed its end as `pa + len`, which overflowed
/// (a panic with overflow checks; without them the end wrapped below the
/// start and the fill reported success having touched nothing). It is an
/// abort, as for any address beyond the PA space.
#[test]
fn host_fill_at_the_top_of_the_address_space_aborts() {
    use scenario::Machine;
    let mut m = sim::SimMachine::new("max").unwrap();
    assert_eq!(m.host_fill(u64::MAX - 7, 16, 0xaa), Err(scenario::Abort));
    assert_eq!(
        m.host_fill(u64::MAX - 4095, 4096, 0xaa),
        Err(scenario::Abort)
    );
}
