//! Fuzz target `host_calls`: see `sim::fuzzing::host_calls::run`. An oracle failure
//! panics, which libFuzzer reports as a crash and saves.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = sim::fuzzing::host_calls::run(data) {
        panic!("host_calls: {e}");
    }
});
