//! Command-line parsing (hand-rolled: eight commands, a few flags).

use std::path::PathBuf;

use crate::DEFAULT_CPU;

/// What the user asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Help,
    Scenario {
        files: Vec<PathBuf>,
        cpu: String,
        sim: bool,
    },
    Test,
    Run {
        cpu: String,
        /// `--linux`: hypervisor, Linux host, VMM, Linux guest.
        linux: bool,
    },
    Bench {
        /// Also boot the Linux host under pKVM, for its column.
        pkvm: bool,
        /// Only the Linux-host part.
        linux_only: bool,
    },
    Fuzz {
        target: Option<String>,
        seconds: u64,
        /// libFuzzer processes per target (`--jobs`); `None`: see
        /// `fuzz::processes`.
        jobs: Option<usize>,
    },
    /// cargo-mutants, with these arguments passed on.
    Mutants(Vec<String>),
    Linux {
        cpu: String,
        smp: u32,
        kernel: String,
    },
    GuestKernel {
        boot: bool,
    },
}

/// Parses the arguments after `cargo xtask`. An `Err` is a usage error.
pub fn parse(args: &[String]) -> Result<Command, String> {
    let Some((command, rest)) = args.split_first() else {
        return Ok(Command::Help);
    };
    if rest.iter().any(|a| a == "-h" || a == "--help") {
        return Ok(Command::Help);
    }
    match command.as_str() {
        "-h" | "--help" | "help" => Ok(Command::Help),
        "scenario" => {
            let mut opts = Options::parse(rest, true)?;
            if opts.positional.is_empty() {
                return Err("`scenario` needs at least one FILE".into());
            }
            Ok(Command::Scenario {
                files: opts.positional.drain(..).map(PathBuf::from).collect(),
                cpu: opts.cpu,
                sim: opts.sim,
            })
        }
        "test" => {
            no_args("test", rest)?;
            Ok(Command::Test)
        }
        "run" => {
            let linux = rest.iter().any(|a| a == "--linux");
            let rest: Vec<String> = rest.iter().filter(|a| *a != "--linux").cloned().collect();
            let opts = Options::parse(&rest, false)?;
            if let Some(extra) = opts.positional.first() {
                return Err(format!("`run` takes no argument `{extra}`"));
            }
            Ok(Command::Run {
                cpu: opts.cpu,
                linux,
            })
        }
        "bench" => {
            let (mut pkvm, mut linux_only) = (false, false);
            for arg in rest {
                let flag = match arg.as_str() {
                    "--pkvm" => &mut pkvm,
                    "--linux" => &mut linux_only,
                    other => {
                        return Err(format!(
                            "`bench` takes `--pkvm` and `--linux`, not `{other}`"
                        ))
                    }
                };
                if std::mem::replace(flag, true) {
                    return Err(format!("`{arg}` given twice"));
                }
            }
            Ok(Command::Bench { pkvm, linux_only })
        }
        "fuzz" => parse_fuzz(rest),
        "mutants" => Ok(Command::Mutants(rest.to_vec())),
        "linux" => {
            let (smp, rest) = take_value(rest, "--smp")?;
            let smp = match smp {
                None => 2,
                Some(v) => match v.parse::<u32>() {
                    Ok(n) if (1..=8).contains(&n) => n,
                    _ => return Err(format!("`--smp` needs a number from 1 to 8, not `{v}`")),
                },
            };
            let (kernel, rest) = take_value(&rest, "--kernel")?;
            let kernel = kernel.unwrap_or_else(|| "6.1".into());
            if kernel != "6.1" && kernel != "7.3" {
                return Err(format!("`--kernel` is 6.1 or 7.3, not `{kernel}`"));
            }
            let opts = Options::parse(&rest, false)?;
            if let Some(extra) = opts.positional.first() {
                return Err(format!("`linux` takes no argument `{extra}`"));
            }
            Ok(Command::Linux {
                cpu: opts.cpu,
                smp,
                kernel,
            })
        }
        "guest-kernel" => match rest {
            [] => Ok(Command::GuestKernel { boot: false }),
            [flag] if flag == "--boot" => Ok(Command::GuestKernel { boot: true }),
            [other, ..] => Err(format!("`guest-kernel` takes only --boot, not `{other}`")),
        },
        other => Err(format!("unknown command `{other}`")),
    }
}

/// `fuzz [TARGET] [--time SECONDS] [--jobs N]`.
fn parse_fuzz(rest: &[String]) -> Result<Command, String> {
    let mut target = None;
    let mut seconds = None;
    let mut jobs = None;
    let mut args = rest.iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> Result<Option<u64>, String> {
            let v = if arg == name {
                Some(
                    args.next()
                        .ok_or(format!("`{name}` needs a number"))?
                        .as_str(),
                )
            } else {
                arg.strip_prefix(name).and_then(|v| v.strip_prefix('='))
            };
            match v {
                None => Ok(None),
                Some(v) => v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .map(Some)
                    .ok_or_else(|| format!("`{name}` needs a positive number, not `{v}`")),
            }
        };
        if let Some(s) = value("--time")? {
            if seconds.replace(s).is_some() {
                return Err("`--time` given twice".into());
            }
            continue;
        }
        if let Some(n) = value("--jobs")? {
            if jobs.replace(n as usize).is_some() {
                return Err("`--jobs` given twice".into());
            }
            continue;
        }
        match arg {
            _ if arg.starts_with('-') => return Err(format!("unknown option `{arg}`")),
            _ if target.is_some() => return Err(format!("`fuzz` takes one TARGET, not `{arg}`")),
            _ => target = Some(arg.clone()),
        }
    }
    Ok(Command::Fuzz {
        target,
        seconds: seconds.unwrap_or(crate::fuzz::DEFAULT_SECONDS),
        jobs,
    })
}

/// `NAME VALUE` or `NAME=VALUE`, taken out of `args`; given twice is an
/// error.
fn take_value(args: &[String], name: &str) -> Result<(Option<String>, Vec<String>), String> {
    let mut value = None;
    let mut rest = Vec::new();
    let mut it = args.iter();
    let prefix = format!("{name}=");
    while let Some(arg) = it.next() {
        let v = if arg == name {
            it.next()
                .filter(|v| !v.starts_with('-'))
                .ok_or_else(|| format!("`{name}` needs a value"))?
                .clone()
        } else if let Some(v) = arg.strip_prefix(&prefix) {
            v.to_owned()
        } else {
            rest.push(arg.clone());
            continue;
        };
        if value.is_some() {
            return Err(format!("`{name}` given twice"));
        }
        value = Some(v);
    }
    Ok((value, rest))
}

fn no_args(command: &str, rest: &[String]) -> Result<(), String> {
    match rest.first() {
        Some(arg) => Err(format!("`{command}` takes no argument `{arg}`")),
        None => Ok(()),
    }
}

/// `--cpu MODEL` / `--cpu=MODEL`, `--sim` (where allowed), positionals.
struct Options {
    cpu: String,
    sim: bool,
    positional: Vec<String>,
}

impl Options {
    fn parse(args: &[String], allow_sim: bool) -> Result<Options, String> {
        let mut opts = Options {
            cpu: DEFAULT_CPU.into(),
            sim: false,
            positional: Vec::new(),
        };
        let mut cpu_given = false;
        let mut args = args.iter();
        let mut only_files = false;
        while let Some(arg) = args.next() {
            let cpu = if only_files {
                None
            } else if arg == "--" {
                only_files = true;
                continue;
            } else if arg == "--cpu" {
                let model = args.next().ok_or("`--cpu` needs a MODEL")?;
                Some(model.clone())
            } else if let Some(model) = arg.strip_prefix("--cpu=") {
                Some(model.to_owned())
            } else if arg == "--sim" && allow_sim {
                opts.sim = true;
                continue;
            } else if arg.starts_with('-') && arg != "-" {
                return Err(format!("unknown option `{arg}`"));
            } else {
                None
            };
            match cpu {
                Some(model) if model.is_empty() || model.starts_with('-') => {
                    return Err(format!("`--cpu` needs a MODEL, not `{model}`"));
                }
                Some(_) if cpu_given => return Err("`--cpu` given twice".into()),
                Some(model) => {
                    opts.cpu = model;
                    cpu_given = true;
                }
                None => opts.positional.push(arg.clone()),
            }
        }
        Ok(opts)
    }
}

#[cfg(test)]
mod tests {
    use super::{parse, Command};
    use std::path::PathBuf;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn help() {
        assert_eq!(parse(&[]), Ok(Command::Help));
        assert_eq!(parse(&args("--help")), Ok(Command::Help));
        assert_eq!(parse(&args("-h")), Ok(Command::Help));
        assert_eq!(parse(&args("test --help")), Ok(Command::Help));
    }

    #[test]
    fn scenario() {
        assert_eq!(
            parse(&args("scenario a.scn --cpu cortex-a57 b.scn --sim")),
            Ok(Command::Scenario {
                files: vec![PathBuf::from("a.scn"), PathBuf::from("b.scn")],
                cpu: "cortex-a57".into(),
                sim: true,
            })
        );
        assert_eq!(
            parse(&args("scenario --cpu=neoverse-v1 a.scn")),
            Ok(Command::Scenario {
                files: vec![PathBuf::from("a.scn")],
                cpu: "neoverse-v1".into(),
                sim: false,
            })
        );
        assert!(parse(&args("scenario --sim")).is_err());
        assert!(parse(&args("scenario a.scn --cpu")).is_err());
        assert!(parse(&args("scenario a.scn --cpu --sim")).is_err());
        assert!(parse(&args("scenario a.scn --cpu max --cpu max")).is_err());
        assert!(parse(&args("scenario a.scn --bogus")).is_err());
    }

    #[test]
    fn run_test_bench() {
        assert_eq!(
            parse(&args("run")),
            Ok(Command::Run {
                cpu: "max".into(),
                linux: false
            })
        );
        assert_eq!(
            parse(&args("run --cpu cortex-a710")),
            Ok(Command::Run {
                cpu: "cortex-a710".into(),
                linux: false
            })
        );
        assert_eq!(
            parse(&args("run --linux --cpu cortex-a57")),
            Ok(Command::Run {
                cpu: "cortex-a57".into(),
                linux: true
            })
        );
        assert!(parse(&args("run --sim")).is_err());
        assert!(parse(&args("run x")).is_err());
        assert_eq!(parse(&args("test")), Ok(Command::Test));
        assert!(parse(&args("test x")).is_err());
        let bench = |pkvm, linux_only| Ok(Command::Bench { pkvm, linux_only });
        assert_eq!(parse(&args("bench")), bench(false, false));
        assert_eq!(parse(&args("bench --pkvm")), bench(true, false));
        assert_eq!(parse(&args("bench --linux --pkvm")), bench(true, true));
        assert!(parse(&args("bench --bare")).is_err());
        assert!(parse(&args("bench --pkvm --pkvm")).is_err());
        assert!(parse(&args("bogus")).is_err());
        assert_eq!(
            parse(&args("fuzz")),
            Ok(Command::Fuzz {
                target: None,
                seconds: crate::fuzz::DEFAULT_SECONDS,
                jobs: None
            })
        );
        assert_eq!(
            parse(&args("fuzz decode --time 5")),
            Ok(Command::Fuzz {
                target: Some("decode".into()),
                seconds: 5,
                jobs: None
            })
        );
        assert_eq!(
            parse(&args("fuzz host_calls --jobs 2 --time=3600")),
            Ok(Command::Fuzz {
                target: Some("host_calls".into()),
                seconds: 3600,
                jobs: Some(2)
            })
        );
        assert!(parse(&args("fuzz --jobs 0")).is_err());
        assert!(parse(&args("fuzz --jobs")).is_err());
        assert!(parse(&args("fuzz --jobs=1 --jobs 2")).is_err());
        assert!(parse(&args("fuzz --time")).is_err());
        assert!(parse(&args("fuzz --time 0")).is_err());
        assert!(parse(&args("fuzz a b")).is_err());
        assert!(parse(&args("fuzz --time=3 --time 4")).is_err());
        assert_eq!(
            parse(&args("mutants --file hyp/src/vcpu.rs")),
            Ok(Command::Mutants(args("--file hyp/src/vcpu.rs")))
        );
        assert_eq!(
            parse(&args("linux --cpu cortex-a57 --smp 4")),
            Ok(Command::Linux {
                cpu: "cortex-a57".into(),
                smp: 4,
                kernel: "6.1".into()
            })
        );
        assert_eq!(
            parse(&args("linux")),
            Ok(Command::Linux {
                cpu: "max".into(),
                smp: 2,
                kernel: "6.1".into()
            })
        );
        assert_eq!(
            parse(&args("linux --kernel=7.3 --smp=4")),
            Ok(Command::Linux {
                cpu: "max".into(),
                smp: 4,
                kernel: "7.3".into()
            })
        );
        assert!(parse(&args("linux --kernel 5.10")).is_err());
        assert!(parse(&args("linux --kernel")).is_err());
        assert!(parse(&args("linux --smp 0")).is_err());
        assert!(parse(&args("linux --smp")).is_err());
        assert!(parse(&args("linux --smp 2 --smp=3")).is_err());
        assert!(parse(&args("--bogus")).is_err());
        assert_eq!(
            parse(&args("guest-kernel")),
            Ok(Command::GuestKernel { boot: false })
        );
        assert_eq!(
            parse(&args("guest-kernel --boot")),
            Ok(Command::GuestKernel { boot: true })
        );
        assert!(parse(&args("guest-kernel --boot --boot")).is_err());
        assert!(parse(&args("guest-kernel x")).is_err());
    }
}
