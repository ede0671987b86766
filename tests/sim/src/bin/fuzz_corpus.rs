//! `fuzz_corpus [OUTDIR]`: writes the fuzz targets' seed corpora (default
//! `fuzz/corpus`, one directory per target) from `tests/scenarios/*.scn`,
//! the boot manifests and the simulator's device tree. Run from the
//! workspace root. Files already there (QEMU's dumped device tree, inputs
//! added by hand) are kept.

use std::path::PathBuf;
use std::process::ExitCode;

use sim::fuzzing::corpus;

fn main() -> ExitCode {
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or("fuzz/corpus".into()));
    match write_all(&out) {
        Ok(n) => {
            println!("fuzz_corpus: {n} seeds written under {}", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fuzz_corpus: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write_all(out: &std::path::Path) -> Result<usize, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir("tests/scenarios")
        .map_err(|e| format!("tests/scenarios: {e} (run from the workspace root)"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "scn"))
        .collect();
    files.sort();
    let mut seeds = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        let name = f
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        seeds.extend(corpus::from_scenario(&name, &text)?);
    }
    for (name, text) in corpus::MANIFEST_SEEDS {
        seeds.push(("manifest", name.into(), text.as_bytes().to_vec()));
    }
    seeds.push(("device_tree", "sim-virt".into(), corpus::sim_device_tree()));
    for (target, name, bytes) in &seeds {
        let dir = out.join(target);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(seeds.len())
}
