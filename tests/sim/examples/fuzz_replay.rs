//! Times the fuzz targets on a corpus without libFuzzer:
//! `cargo run --release -p sim --example fuzz_replay -- TARGET DIR [ROUNDS]`.
//! Prints executions per second over every file of DIR, `ROUNDS` times
//! (default 3), so a change to a target's cost can be measured, or
//! profiled with `perf record`, apart from the fuzzer's own work.

use std::time::Instant;

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [name, dir, rest @ ..] = args.as_slice() else {
        return Err("usage: fuzz_replay TARGET DIR [ROUNDS]".into());
    };
    let rounds: usize = rest.first().and_then(|r| r.parse().ok()).unwrap_or(3);
    let target = sim::fuzzing::target(name).ok_or_else(|| format!("no target {name}"))?;
    let mut inputs = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| format!("{dir}: {e}"))? {
        let p = e.map_err(|e| e.to_string())?.path();
        inputs.push(std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?);
    }
    let t = Instant::now();
    let mut failures = 0;
    for _ in 0..rounds {
        for i in &inputs {
            if target(i).is_err() {
                failures += 1;
            }
        }
    }
    let n = rounds * inputs.len();
    let s = t.elapsed().as_secs_f64();
    println!(
        "{name}: {n} executions in {s:.2} s, {:.0} exec/s, {failures} failures",
        n as f64 / s
    );
    Ok(())
}
