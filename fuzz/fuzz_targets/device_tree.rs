//! Fuzz target `device_tree`: see `sim::fuzzing::platform::device_tree`. An oracle failure
//! panics, which libFuzzer reports as a crash and saves.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = sim::fuzzing::platform::device_tree(data) {
        panic!("device_tree: {e}");
    }
});
