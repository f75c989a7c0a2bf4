//! The operator's subcommands against a running replayer (`status`, `hosts`, `snapshots`,
//! `revert`, `resume`, `diff`, `state`, `watch`, `export`): argument handling and printing.
//! The calls themselves are `safetytwin_client`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use safetytwin_model::{
    Content, DeltaBatch, FileDelta, FileKind, FileState, Group, GroupDelta, Package, PackageDelta,
    ProcessDelta, UnitDelta, User, UserDelta,
};
use safetytwin_proto::v1::get_state_request::At;
use serde_json::{Value, json};

use crate::Command;

/// Prints one line of text output. Host ids, paths, argv, unit and snapshot names and failure
/// messages all come from monitored hosts, so the whole line is escaped (`--json` output is
/// printed with `println!`: serde_json escapes control characters itself).
macro_rules! say {
    ($($arg:tt)*) => {
        println!("{}", safetytwin_model::escape::Escaped(&format!($($arg)*)))
    };
}

/// [`say!`] on stderr.
macro_rules! say_err {
    ($($arg:tt)*) => {
        eprintln!("{}", safetytwin_model::escape::Escaped(&format!($($arg)*)))
    };
}

/// `verify` found differences (exit code 5).
#[derive(Debug)]
pub struct Differs(pub usize);

impl std::fmt::Display for Differs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the twin differs from the host in {} items", self.0)
    }
}

impl std::error::Error for Differs {}

fn time(unix_ns: i64) -> String {
    safetytwin_proto::json::rfc3339(unix_ns)
}

fn ms(micros: u64) -> String {
    format!("{:.0} ms", micros as f64 / 1000.0)
}

fn kind(f: &FileState) -> &'static str {
    match f.kind {
        FileKind::Regular => "file",
        FileKind::Directory => "dir",
        FileKind::Symlink => "link",
        FileKind::Other => "other",
    }
}

fn describe(f: &FileState) -> String {
    let what = match (&f.content, &f.link_target) {
        (_, Some(target)) => format!("→ {target}"),
        (Content::Text(_), _) => format!("{} bytes", f.size),
        (Content::Redacted, _) => "content redacted".into(),
        (Content::TooLarge | Content::Binary, _) => "hash only".into(),
        (Content::None, _) => String::new(),
    };
    format!("{} {:04o} {}:{} {what}", kind(f), f.mode, f.uid, f.gid)
}

fn package_line(p: &Package) -> String {
    format!(
        "package {}:{} {} {}",
        p.name,
        p.arch,
        p.version,
        p.status.as_str()
    )
}

fn user_line(u: &User) -> String {
    let shell = if u.shell.is_empty() { "-" } else { &u.shell };
    format!(
        "user {} {}:{} {} {shell} password {}",
        u.name,
        u.uid,
        u.gid,
        u.home,
        u.password.as_str()
    )
}

fn group_line(g: &Group) -> String {
    format!("group {} {} {}", g.name, g.gid, g.members.join(","))
}

/// The changes of a delta, one line each.
fn delta_lines(d: &DeltaBatch) -> Vec<String> {
    let mut out = Vec::new();
    for f in &d.files {
        out.push(match f {
            FileDelta::Upsert { path, state } => format!("  ~ {path}  ({})", describe(state)),
            FileDelta::Remove { path } => format!("  - {path}"),
        });
    }
    for u in &d.units {
        out.push(match u {
            UnitDelta::Upsert(u) => format!(
                "  ~ unit {} {}{}",
                u.name,
                if u.active() { "active" } else { "inactive" },
                if u.enabled_by.is_empty() {
                    ""
                } else {
                    ", enabled"
                }
            ),
            UnitDelta::Remove { name } => format!("  - unit {name}"),
        });
    }
    for p in &d.processes {
        out.push(match p {
            ProcessDelta::Upsert(p) => format!("  + pid {} {}", p.pid, p.argv.join(" ")),
            ProcessDelta::Remove { pid } => format!("  - pid {pid}"),
        });
    }
    if let Some(os) = &d.os {
        out.push(format!("  ~ os {os}"));
    }
    for p in &d.packages {
        out.push(match p {
            PackageDelta::Upsert(p) => format!("  ~ {}", package_line(p)),
            PackageDelta::Remove { name, arch } => format!("  - package {name}:{arch}"),
        });
    }
    for u in &d.users {
        out.push(match u {
            UserDelta::Upsert(u) => format!("  ~ {}", user_line(u)),
            UserDelta::Remove { name } => format!("  - user {name}"),
        });
    }
    for g in &d.groups {
        out.push(match g {
            GroupDelta::Upsert(g) => format!("  ~ {}", group_line(g)),
            GroupDelta::Remove { name } => format!("  - group {name}"),
        });
    }
    out
}

fn parse_at(at: &str) -> anyhow::Result<At> {
    if let Ok(seq) = at.parse::<u64>() {
        return Ok(At::Seq(seq));
    }
    let t = humantime::parse_rfc3339_weak(at)
        .with_context(|| format!("--at {at:?} is neither a seq nor an RFC 3339 time"))?;
    let ns = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    Ok(At::UnixNs(ns))
}

/// Runs one client subcommand.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Status { conn, json } => {
            let s = conn.connect().await?.status().await?;
            if json {
                println!("{}", safetytwin_proto::json::status(&s));
                return Ok(());
            }
            say!(
                "replayer {}: up {} s, {} hosts, {} batches, twin backend: {}",
                s.version,
                s.uptime_seconds,
                s.hosts,
                s.batches,
                s.twin_backend
            );
            for t in &s.twins {
                say!(
                    "  {}: domain {}, at seq {}{}{}",
                    t.host_id,
                    t.domain_state,
                    t.applied_seq,
                    if t.snapshot.is_empty() {
                        String::new()
                    } else {
                        format!(", snapshot {}", t.snapshot)
                    },
                    if t.held {
                        " (held: `resume` to follow)"
                    } else {
                        ""
                    }
                );
                if !t.owner.is_empty() {
                    say!(
                        "    driven by worker {} (lease {}, moved {} times)",
                        t.owner,
                        if t.lease_ms >= 0 {
                            format!("{} s left", t.lease_ms / 1000)
                        } else {
                            "ended: the next worker's round takes it".to_owned()
                        },
                        t.lease_moves
                    );
                }
                if t.last_apply_seq > 0 {
                    let steps: Vec<String> = t
                        .last_apply_steps
                        .iter()
                        .map(|s| format!("{} {}", s.name, ms(s.micros)))
                        .collect();
                    say!(
                        "    last apply: seq {}, {} items in {} ({})",
                        t.last_apply_seq,
                        t.last_apply_items,
                        ms(t.last_apply_micros),
                        steps.join(", ")
                    );
                }
                if t.last_failure_seq > 0 {
                    say!(
                        "    last failure: seq {}: {}",
                        t.last_failure_seq,
                        t.last_failure
                    );
                }
                if let Some(v) = &t.last_verify {
                    say!(
                        "    {}: seq {}, {} differences, {} equal, {} not held by design ({})",
                        if v.full {
                            "last verify"
                        } else {
                            "checked after the apply"
                        },
                        v.seq,
                        v.differences,
                        v.equal,
                        v.by_design,
                        ms(v.micros)
                    );
                    for line in v.first.lines() {
                        say!("      {line}");
                    }
                }
            }
        }
        Command::Hosts { conn, json } => {
            for h in conn.connect().await?.hosts().await? {
                if json {
                    println!(
                        "{}",
                        json!({"host": h.host_id, "last_seq": h.last_seq, "boot": h.boot_id,
                               "last_window_end": time(h.last_window_end_unix_ns)})
                    );
                } else {
                    say!(
                        "{}  seq {}  boot {}  last batch {}",
                        h.host_id,
                        h.last_seq,
                        h.boot_id,
                        time(h.last_window_end_unix_ns)
                    );
                }
            }
        }
        Command::Snapshots { conn, host, json } => {
            let list = conn
                .connect()
                .await?
                .snapshots(host.as_deref().unwrap_or(""))
                .await?;
            for s in list {
                if json {
                    println!("{}", safetytwin_proto::json::snapshot(&s));
                } else {
                    say!(
                        "{}  host {}  seq {}  {}  apply {} ({} items)",
                        s.name,
                        s.host_id,
                        s.seq,
                        time(s.created_unix_ns),
                        ms(s.apply_micros),
                        s.items
                    );
                }
            }
        }
        Command::Revert {
            conn,
            snapshot,
            host,
        } => {
            let s = conn
                .connect()
                .await?
                .revert(host.as_deref().unwrap_or(""), &snapshot)
                .await?;
            say!(
                "{}: twin reverted to {} (seq {}); it holds there until \
                 `safetytwin-replayer resume --host {}`",
                s.host_id,
                s.name,
                s.seq,
                s.host_id
            );
        }
        Command::Verify { conn, host, json } => {
            let mut c = conn.connect().await?;
            let host = c.resolve_host(host).await?;
            let v = c.verify(&host).await?;
            if json {
                println!("{}", safetytwin_proto::json::verify(&v));
            } else {
                say!(
                    "{host}: twin at seq {}: {} equal, {} differences",
                    v.seq,
                    v.equal,
                    v.differences.len()
                );
                for d in &v.differences {
                    say!("  {} {}: host {}, twin {}", d.kind, d.item, d.host, d.twin);
                }
                for b in &v.by_design {
                    say!("  not compared by design: {} ({})", b.reason, b.count);
                }
            }
            if !v.differences.is_empty() {
                return Err(Differs(v.differences.len()).into());
            }
        }
        Command::Resume { conn, host } => {
            let mut c = conn.connect().await?;
            let host = c.resolve_host(host).await?;
            let seq = c.resume(&host).await?;
            say!("{host}: following again from seq {seq}");
        }
        Command::Diff {
            conn,
            from,
            to,
            host,
            json,
        } => {
            if from > to {
                bail!("FROM ({from}) is after TO ({to})");
            }
            let mut c = conn.connect().await?;
            let host = c.resolve_host(host).await?;
            let d = c.diff(&host, from, to).await?;
            if json {
                let mut m = safetytwin_proto::json::delta(&d);
                m.insert("host".into(), host.into());
                m.insert("from".into(), from.into());
                m.insert("to".into(), to.into());
                println!("{}", Value::Object(m));
            } else {
                say!("{host}: seq {from} → {to}");
                for l in delta_lines(&d) {
                    say!("{l}");
                }
            }
        }
        Command::State {
            conn,
            at,
            host,
            json,
        } => {
            let at = at.as_deref().map(parse_at).transpose()?;
            let mut c = conn.connect().await?;
            let host = c.resolve_host(host).await?;
            let (seq, model) = c.state(&host, at).await?;
            if json {
                let mut m = safetytwin_proto::json::model(&model);
                m.insert("host".into(), host.into());
                m.insert("seq".into(), seq.into());
                println!("{}", Value::Object(m));
            } else {
                let active = model.units.values().filter(|u| u.active).count();
                say!(
                    "{host} at seq {seq}: {} files, {} units with a cgroup ({active} active), \
                     {} processes, {} packages, {} users, {} groups",
                    model.files.len(),
                    model.units.len(),
                    model.processes.len(),
                    model.packages.len(),
                    model.users.len(),
                    model.groups.len()
                );
                if let Some(os) = &model.os {
                    say!("  os {os}");
                }
                for (path, f) in &model.files {
                    say!("  {path}  ({})", describe(f));
                }
                for (name, u) in &model.units {
                    say!(
                        "  unit {name} {}",
                        if u.active { "active" } else { "inactive" }
                    );
                }
                for p in model.packages.values() {
                    say!("  {}", package_line(p));
                }
                for u in model.users.values() {
                    say!("  {}", user_line(u));
                }
                for g in model.groups.values() {
                    say!("  {}", group_line(g));
                }
            }
        }
        Command::Watch { conn, host, json } => {
            let mut c = conn.connect().await?;
            let host = host.unwrap_or_default();
            // Start at the present: the latest seq of the host (of all hosts: their own).
            let from = if host.is_empty() {
                0
            } else {
                c.hosts()
                    .await?
                    .iter()
                    .find(|h| h.host_id == host)
                    .map_or(0, |h| h.last_seq)
            };
            // On stderr, so `--json` output stays clean; it also tells a script that every
            // change stored from now on will be printed.
            if host.is_empty() {
                say_err!("watching every host (Ctrl-C stops)");
            } else {
                say_err!("watching {host} after seq {from} (Ctrl-C stops)");
            }
            let skip_history = host.is_empty();
            let started = SystemTime::now();
            c.watch(&host, from, |b| {
                // Every host's history comes first when no host is named: show only the new.
                let t =
                    UNIX_EPOCH + Duration::from_nanos(b.header.window_end_unix_ns.max(0) as u64);
                if skip_history && t < started {
                    return true;
                }
                if json {
                    let mut m = safetytwin_proto::json::batch(&b);
                    m.insert(
                        "window_end".into(),
                        time(b.header.window_end_unix_ns).into(),
                    );
                    println!("{}", Value::Object(m));
                } else {
                    say!(
                        "{} seq {} at {}{}{}",
                        b.header.host_id,
                        b.header.seq,
                        time(b.header.window_end_unix_ns),
                        if b.header.resync { " (resync)" } else { "" },
                        if b.header.more {
                            " (a part: continued at the next seq)"
                        } else {
                            ""
                        }
                    );
                    for l in delta_lines(&b.delta) {
                        say!("{l}");
                    }
                }
                true
            })
            .await?;
        }
        Command::Export {
            conn,
            seq,
            dir,
            host,
        } => {
            let mut c = conn.connect().await?;
            let host = c.resolve_host(host).await?;
            let (at, model) = c.state(&host, Some(At::Seq(seq))).await?;
            let done = safetytwin_client::export::export(&model, &host, at, &dir)
                .with_context(|| format!("cannot export into {}", dir.display()))?;
            say!(
                "{host} at seq {at} → {}: {} files, {} directories, {} links written; {} listed \
                 in manifest.json only (content not carried); {} refused (see manifest.json)",
                dir.display(),
                done.files,
                done.dirs,
                done.links,
                done.listed_only,
                done.refused
            );
        }
        Command::Serve { .. } | Command::GenCerts { .. } => {
            unreachable!("served by main")
        }
    }
    Ok(())
}
