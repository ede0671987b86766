//! Fuzz target `guest_exits`: see `sim::fuzzing::guest_exits::run`. An oracle failure
//! panics, which libFuzzer reports as a crash and saves.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = sim::fuzzing::guest_exits::run(data) {
        panic!("guest_exits: {e}");
    }
});
