//! Fuzz target `decode`: see `sim::fuzzing::decode::run`. An oracle failure
//! panics, which libFuzzer reports as a crash and saves.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = sim::fuzzing::decode::run(data) {
        panic!("decode: {e}");
    }
});
