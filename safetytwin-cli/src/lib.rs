//! What the two binaries' command lines share, so they behave alike: a TOML configuration file
//! (`--config FILE`) whose keys are the subcommand's long flags, and the logging set-up (quiet
//! by default, `-v` info, `-vv` debug, `RUST_LOG` wins).
//!
//! A configuration file is turned into flags placed before the ones typed, and the command
//! lets a later flag override an earlier one, so flags always beat the file. Every key and
//! value is checked against the subcommand's own arguments before anything runs: an unknown
//! key or a bad value names the file, the key and the problem.
//!
//! Also the one derivation of this machine's host id ([`this_host_id`]).

pub mod exposition;

use std::{
    ffi::{OsStr, OsString},
    io::IsTerminal,
    path::{Path, PathBuf},
};

/// The flags every subcommand of both binaries takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Global {
    /// More log output on stderr (-v info, -vv debug); quiet by default.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Read settings from this TOML file: its keys are the subcommand's long flags (`interval
    /// = 10`, `watch = ["/etc"]`, `insecure = true`); flags given here override it.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `text` (a shipped configuration file) with its commented `# key = value` lines, the
/// documented defaults, switched on: what the tests check every default against.
pub fn defaults_switched_on(text: &str) -> String {
    text.lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(kv) if kv.split_once(" = ").is_some_and(|(k, _)| !k.contains(' ')) => kv,
            _ => l,
        })
        .map(|l| l.to_owned() + "\n")
        .collect()
}

/// This machine's host id as the daemon names it unless told otherwise: `/etc/machine-id`,
/// else the hostname. `gen-certs` and `xtask up` default to it, so the daemon, its certificate
/// and the tooling agree on one name.
pub fn this_host_id() -> Option<String> {
    ["/etc/machine-id", "/proc/sys/kernel/hostname"]
        .iter()
        .find_map(|p| {
            let id = std::fs::read_to_string(p).ok()?.trim().to_owned();
            (!id.is_empty()).then_some(id)
        })
}

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// It could not be read.
    #[error("config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It is not valid TOML.
    #[error("config {path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A key is not a flag of the subcommand, or its value is wrong.
    #[error("config {path}: key `{key}`: {problem}")]
    Key {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// The subcommand named in `argv` (after global flags), with its position.
fn subcommand<'a>(cmd: &'a clap::Command, argv: &[OsString]) -> Option<(usize, &'a clap::Command)> {
    argv.iter().enumerate().skip(1).find_map(|(i, a)| {
        let a = a.to_str()?;
        cmd.find_subcommand(a).map(|s| (i, s))
    })
}

/// The value of `--config FILE` / `--config=FILE` in `argv`.
fn config_path(argv: &[OsString]) -> Option<PathBuf> {
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(p));
        }
    }
    None
}

/// Flags that are not settings: a file naming another file, or one that makes a service print
/// its help or version and exit successfully instead of running.
const NOT_SETTINGS: &[&str] = &["config", "help", "version"];

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The flags a configuration file stands for, checked against `sub`'s arguments.
pub fn config_args(
    sub: &clap::Command,
    path: &Path,
    text: &str,
) -> Result<Vec<OsString>, ConfigError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.message().to_owned()
                + &e.span()
                    .map(|s| {
                        let line = text[..s.start].lines().count().max(1);
                        format!(" (line {line})")
                    })
                    .unwrap_or_default(),
        })?;
    // Built, so every argument has its defaults (number of values, action) filled in.
    let mut sub = sub.clone();
    sub.build();
    let sub = &sub;
    let mut out = Vec::new();
    for (key, value) in &table {
        let bad = |problem: String| ConfigError::Key {
            path: path.to_owned(),
            key: key.clone(),
            problem,
        };
        let long = key.replace('_', "-");
        let Some(arg) = sub.get_arguments().find(|a| {
            a.get_long() == Some(long.as_str()) && !NOT_SETTINGS.contains(&long.as_str())
        }) else {
            let known: Vec<&str> = sub
                .get_arguments()
                .filter_map(|a| a.get_long())
                .filter(|l| !NOT_SETTINGS.contains(l))
                .collect();
            return Err(bad(format!(
                "not a setting of `{}` (settings: {})",
                sub.get_name(),
                known.join(", ")
            )));
        };
        let flag = format!("--{long}");
        let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
        let values: Vec<String> = match value {
            toml::Value::Array(items) => items
                .iter()
                .map(|v| scalar(v).ok_or_else(|| bad("lists hold plain values".into())))
                .collect::<Result<_, _>>()?,
            v => vec![scalar(v).ok_or_else(|| bad("expected a plain value or a list".into()))?],
        };
        if !takes_value {
            // A switch: `insecure = true` sets it, false leaves it off.
            match value {
                toml::Value::Boolean(true) => out.push(OsString::from(flag)),
                toml::Value::Boolean(false) => {}
                _ => return Err(bad("expected true or false".into())),
            }
            continue;
        }
        if values.len() > 1 && !matches!(arg.get_action(), clap::ArgAction::Append) {
            return Err(bad("takes one value, not a list".into()));
        }
        // The flag's own value parser, on an argument without its relations to others (they
        // would not exist in this one-argument command).
        let check = clap::Command::new("config").arg(
            clap::Arg::new("value")
                .long("value")
                .value_parser(arg.get_value_parser().clone())
                .action(clap::ArgAction::Set),
        );
        for v in values {
            check
                .clone()
                .try_get_matches_from([OsStr::new("config"), OsStr::new("--value"), OsStr::new(&v)])
                .map_err(|e| {
                    let msg = e.to_string().replace("--value", &flag);
                    let first = msg.lines().next().unwrap_or_default();
                    bad(first.trim_start_matches("error: ").to_owned())
                })?;
            out.push(OsString::from(&flag));
            out.push(OsString::from(v));
        }
    }
    Ok(out)
}

/// `argv` with the flags of its `--config FILE` (if any) inserted right after the subcommand
/// name, before the typed flags. `cmd` must be built with `args_override_self(true)`.
pub fn expand(cmd: &clap::Command, argv: Vec<OsString>) -> Result<Vec<OsString>, ConfigError> {
    let Some(path) = config_path(&argv) else {
        return Ok(argv);
    };
    let Some((at, sub)) = subcommand(cmd, &argv) else {
        return Ok(argv);
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let extra = config_args(sub, &path, &text)?;
    let mut out = argv;
    out.splice(at + 1..at + 1, extra);
    Ok(out)
}

/// Parses the process's arguments, configuration file included; a bad file ends the process
/// with one line and exit code 2, like a bad flag.
pub fn parse<T: clap::Parser>(bin: &str) -> T {
    let cmd = T::command().args_override_self(true);
    let argv = match expand(&cmd, std::env::args_os().collect()) {
        Ok(argv) => argv,
        Err(e) => {
            eprintln!("{bin}: error: {e}");
            std::process::exit(2);
        }
    };
    let matches = cmd.try_get_matches_from(argv).unwrap_or_else(|e| e.exit());
    T::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Logs to stderr: warnings by default, `-v` info, `-vv` debug; `RUST_LOG` overrides.
pub fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_writer(LogLine::default)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .init();
}

/// Collects one formatted event (tracing-subscriber writes each event through a writer of its
/// own) and writes it to stderr in one piece, escaped by
/// [`safetytwin_model::escape::escape_log_line`]: paths, host and unit names in log fields come
/// from monitored hosts.
#[derive(Default)]
struct LogLine(Vec<u8>);

impl std::io::Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        use std::io::Write;
        let line = String::from_utf8_lossy(&self.0);
        // Nowhere to report a failed log write.
        let _ = std::io::stderr()
            .write_all(safetytwin_model::escape::escape_log_line(&line).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use clap::{Parser, Subcommand};

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Cmd,
    }

    #[derive(Debug, Subcommand)]
    enum Cmd {
        Run {
            #[arg(long)]
            config: Option<PathBuf>,
            #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
            interval: u64,
            #[arg(long)]
            insecure: bool,
            #[arg(long = "watch")]
            watch: Vec<String>,
            #[arg(long)]
            replayer: Option<String>,
        },
    }

    fn parse_with(file: &str, typed: &[&str]) -> Result<Cli, String> {
        // A directory per call: tests run in parallel, and two calls once shared a file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(&path, file).unwrap();
        let mut argv: Vec<OsString> = vec!["bin".into(), "run".into(), "--config".into()];
        argv.push(path.into());
        argv.extend(typed.iter().map(OsString::from));
        let cmd = <Cli as clap::CommandFactory>::command().args_override_self(true);
        let argv = expand(&cmd, argv).map_err(|e| e.to_string())?;
        let m = cmd.try_get_matches_from(argv).map_err(|e| e.to_string())?;
        <Cli as clap::FromArgMatches>::from_arg_matches(&m).map_err(|e| e.to_string())
    }

    #[test]
    fn file_sets_flags_and_typed_flags_win() {
        let file = "interval = 30\ninsecure = true\nwatch = [\"/etc\", \"/srv\"]\nreplayer = \"http://a\"\n";
        let Cmd::Run {
            interval,
            insecure,
            watch,
            replayer,
            ..
        } = parse_with(file, &["--interval", "5"]).unwrap().command;
        assert_eq!((interval, insecure), (5, true));
        assert_eq!(watch, ["/etc", "/srv"]);
        assert_eq!(replayer.as_deref(), Some("http://a"));
        let Cmd::Run { interval, .. } = parse_with("interval = 30\n", &[]).unwrap().command;
        assert_eq!(interval, 30);
    }

    #[test]
    fn bad_files_name_the_key_and_the_problem() {
        let e = parse_with("intervall = 3\n", &[]).unwrap_err();
        assert!(e.contains("key `intervall`: not a setting of `run`"), "{e}");
        assert!(e.contains("interval"), "{e}");
        let e = parse_with("interval = 0\n", &[]).unwrap_err();
        assert!(e.contains("key `interval`") && e.contains("0"), "{e}");
        let e = parse_with("interval = [1, 2]\n", &[]).unwrap_err();
        assert!(e.contains("takes one value"), "{e}");
        let e = parse_with("insecure = \"yes\"\n", &[]).unwrap_err();
        assert!(e.contains("expected true or false"), "{e}");
        let e = parse_with("interval = \n", &[]).unwrap_err();
        assert!(e.contains("(line 1)"), "{e}");
    }

    /// `help = true` used to become `--help`: the service printed its help and exited 0, so
    /// systemd saw a clean stop, not a bad file.
    #[test]
    fn help_and_config_are_not_settings() {
        for file in ["help = true\n", "config = \"/etc/other.toml\"\n"] {
            let e = parse_with(file, &[]).unwrap_err();
            assert!(e.contains("not a setting of `run`"), "{file}: {e}");
        }
    }
}
