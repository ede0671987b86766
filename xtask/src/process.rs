//! Running child processes: cargo, the simulator, and reading the scenario
//! summary line they print.

use std::ffi::OsString;
use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::ops::AddAssign;
use std::process::{Command, ExitCode, ExitStatus, Stdio};

use crate::workspace_root;

/// The cargo that runs this xtask (so the pinned toolchain is used), or
/// `cargo` from `PATH`.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo")))
}

/// `cargo run --release -q -p sim --bin sim -- --cpu MODEL`; the caller
/// appends the scenario files. The working directory is left alone, so
/// relative file names work and are reported as given.
pub fn sim_command(cpu: &str) -> Command {
    let mut cmd = cargo();
    cmd.arg("run")
        .arg("--manifest-path")
        .arg(workspace_root().join("Cargo.toml"))
        .args(["--release", "-q", "-p", "sim", "--bin", "sim", "--"])
        .args(["--cpu", cpu]);
    cmd
}

/// Runs `cmd` with inherited standard streams.
pub fn status(cmd: &mut Command) -> Result<ExitStatus, String> {
    cmd.status()
        .map_err(|e| format!("cannot run {}: {e}", describe(cmd)))
}

/// Whether `cmd` ran and exited with status 0; reports why not on stderr.
pub fn succeeded(cmd: &mut Command) -> bool {
    match status(cmd) {
        Ok(s) if s.success() => true,
        Ok(s) => {
            eprintln!("xtask: {} exited with {s}", describe(cmd));
            false
        }
        Err(e) => {
            eprintln!("xtask: {e}");
            false
        }
    }
}

/// The exit code to pass on for a child's result: its own code, or 1 when
/// it could not run or was killed by a signal.
pub fn exit_code(result: Result<ExitStatus, String>) -> ExitCode {
    match result {
        Ok(s) => match s.code() {
            Some(0) => ExitCode::SUCCESS,
            Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
            None => {
                eprintln!("xtask: child process ended by {s}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A command line for messages, with `$CARGO` (a long toolchain path)
/// shown as `cargo`.
pub fn describe(cmd: &Command) -> String {
    let program = cmd.get_program();
    let mut s = if std::env::var_os("CARGO").is_some_and(|c| c == program) {
        "cargo".to_owned()
    } else {
        program.to_string_lossy().into_owned()
    };
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Scenario statement counts, as in a runner's closing line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
}

impl Counts {
    /// Parses a closing line `N passed, N failed` or
    /// `N passed, N failed, N skipped`.
    pub fn parse(line: &str) -> Option<Counts> {
        let mut parts = line.trim().split(", ");
        let passed = count(parts.next()?, "passed")?;
        let failed = count(parts.next()?, "failed")?;
        let skipped = match parts.next() {
            Some(p) => count(p, "skipped")?,
            None => 0,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Counts {
            passed,
            failed,
            skipped,
        })
    }
}

fn count(part: &str, word: &str) -> Option<u64> {
    let (n, w) = part.split_once(' ')?;
    (w == word).then_some(())?;
    n.parse().ok()
}

impl AddAssign for Counts {
    fn add_assign(&mut self, other: Counts) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.skipped += other.skipped;
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} passed, {} failed", self.passed, self.failed)?;
        if self.skipped != 0 {
            write!(f, ", {} skipped", self.skipped)?;
        }
        Ok(())
    }
}

/// Runs a scenario runner (`sim`, later the QEMU runner), echoing its
/// standard output line by line while looking for its closing
/// `N passed, N failed[, N skipped]` line.
///
/// Returns the counts of the last such line, or an error if the runner
/// could not run, printed no closing line, reported failures, or exited
/// with a non-zero status. The counts are returned with the error when
/// there are some, so that a total can still be printed.
pub fn run_counted(cmd: &mut Command) -> Result<Counts, (String, Option<Counts>)> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| (format!("cannot run {}: {e}", describe(cmd)), None))?;
    let mut counts = None;
    if let Some(stdout) = child.stdout.take() {
        let mut out = std::io::stdout();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // Echoing is best effort: a closed stdout must not hide the
            // verdict, which comes from the exit status.
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
            if let Some(c) = Counts::parse(&line) {
                counts = Some(c);
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| (format!("waiting for {}: {e}", describe(cmd)), counts))?;
    match counts {
        _ if !status.success() => Err((format!("{} exited with {status}", describe(cmd)), counts)),
        None => Err((
            format!(
                "{} printed no closing `N passed, N failed` line",
                describe(cmd)
            ),
            None,
        )),
        Some(c) if c.failed != 0 => Err((format!("{c}"), counts)),
        Some(c) => Ok(c),
    }
}

#[cfg(test)]
mod tests {
    use super::Counts;

    #[test]
    fn parses_closing_lines() {
        assert_eq!(
            Counts::parse("12 passed, 0 failed"),
            Some(Counts {
                passed: 12,
                failed: 0,
                skipped: 0
            })
        );
        assert_eq!(
            Counts::parse("3 passed, 1 failed, 4 skipped\n"),
            Some(Counts {
                passed: 3,
                failed: 1,
                skipped: 4
            })
        );
        assert_eq!(Counts::parse("tests/a.scn:3: expected ok, got EPERM"), None);
        assert_eq!(Counts::parse("3 passed"), None);
        assert_eq!(Counts::parse("3 passed, 1 failed, 2 skipped, 1 x"), None);
        assert_eq!(Counts::parse("x passed, 1 failed"), None);
    }

    #[test]
    fn displays_skipped_only_when_some() {
        let mut total = Counts::parse("1 passed, 2 failed").unwrap_or_default();
        assert_eq!(total.to_string(), "1 passed, 2 failed");
        total += Counts {
            passed: 1,
            failed: 0,
            skipped: 3,
        };
        assert_eq!(total.to_string(), "2 passed, 2 failed, 3 skipped");
    }
}
