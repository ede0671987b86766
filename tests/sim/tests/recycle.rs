//! A board built on recycled RAM starts exactly as one built on fresh RAM
//! (`sim::mem`): after the fuzz targets' inputs have run on the boards of
//! a thread, every model's board there has the same memory, page for
//! page, as the same board built on a thread that never built one.

use std::path::Path;

use sim::fuzzing::{target, FUZZ_SPARE_POOL, MODELS};
use sim::SimMachine;

/// Runs up to `n` seeds of `name` on this thread's boards.
fn run_seeds(name: &str, n: usize) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    let run = target(name).unwrap();
    for f in files.iter().take(n) {
        let data = std::fs::read(f).unwrap();
        run(&data).unwrap_or_else(|e| panic!("{name} on {}: {e}", f.display()));
    }
}

#[test]
fn a_recycled_board_starts_as_a_fresh_one() {
    std::thread::spawn(|| {
        // Twice, so that every model's buffer has been put back after a
        // build on recycled RAM too.
        for _ in 0..2 {
            run_seeds("host_calls", 24);
            run_seeds("guest_exits", 24);
        }
        for model in MODELS {
            let recycled = SimMachine::with_spare_pool(model, FUZZ_SPARE_POOL).unwrap();
            let fresh = std::thread::spawn(move || {
                let m = SimMachine::with_spare_pool(model, FUZZ_SPARE_POOL).unwrap();
                let phys = m.phys().clone();
                // Keep the buffer out of this thread's spares: `phys`
                // outlives the board and is compared below.
                drop(m);
                phys
            })
            .join()
            .unwrap();
            assert_eq!(
                recycled.phys().first_difference(&fresh),
                None,
                "{model}: a board on recycled RAM differs from a fresh one"
            );
        }
    })
    .join()
    .unwrap();
}
