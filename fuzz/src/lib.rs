//! The bodies of the fuzz targets, one function per target, each taking the raw fuzz input.
//!
//! They live in a library so that two drivers share them: libFuzzer (`fuzz_targets/<name>.rs`,
//! `cargo fuzz run <name>`, `cargo xtask fuzz`) and the corpus replay test below, which runs
//! every committed corpus file through the same function on a stable toolchain in
//! `cargo xtask test`. A target panics only when the code under test breaks one of its own
//! promises (a panic, an overflow, a conversion that does not round-trip, a plan step an
//! attacker could steer); an input the code rejects with an error is a pass.

use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
};

use prost::Message;
use safetytwin_model::{FileDelta, paths};
use safetytwin_proto::{
    convert::{batch_from_wire, batch_to_wire, model_from_wire, model_to_wire},
    spool::Spool,
    v1,
};

/// The daemon's real command line (`Cli` is private to its binary). Compiled in here rather
/// than made public, so the config target checks the flags that ship without widening the
/// daemon's library API.
#[allow(unused, clippy::all)]
#[path = "../../safetytwin-daemon/src/main.rs"]
mod daemon_main;

/// (a) Wire decode and convert: bytes as a `DeltaBatch` and as a `HostState`; whatever
/// `convert` accepts must survive the round trip to the wire and back unchanged, and its
/// encoding must decode to the same message.
pub fn wire(data: &[u8]) {
    if let Ok(w) = v1::DeltaBatch::decode(data)
        && let Ok(batch) = batch_from_wire(w)
    {
        let again = batch_to_wire(&batch);
        let bytes = again.encode_to_vec();
        let decoded = v1::DeltaBatch::decode(bytes.as_slice()).expect("our own encoding decodes");
        assert_eq!(decoded, again, "encode/decode changed the message");
        let back = batch_from_wire(decoded).expect("a batch convert produced converts back");
        assert_eq!(back, batch, "batch changed in the wire round trip");
    }
    if let Ok(w) = v1::HostState::decode(data)
        && let Ok(model) = model_from_wire(w)
    {
        let again = model_to_wire(&model);
        let bytes = again.encode_to_vec();
        let decoded = v1::HostState::decode(bytes.as_slice()).expect("our own encoding decodes");
        assert_eq!(decoded, again, "encode/decode changed the message");
        let back = model_from_wire(decoded).expect("a model convert produced converts back");
        assert_eq!(back, model, "model changed in the wire round trip");
    }
}

/// The bytes left to read, taken from the front.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        first
    }

    /// A length-prefixed (u16 LE) slice, cut short at the end of the input.
    fn chunk(&mut self) -> &'a [u8] {
        let len = u16::from_le_bytes([self.byte(), self.byte()]) as usize;
        let (chunk, rest) = self.0.split_at(len.min(self.0.len()));
        self.0 = rest;
        chunk
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

/// A fresh directory for this process's spool runs (on tmpfs when there is one, as the
/// target writes and fsyncs files on every input).
fn scratch(name: &str) -> PathBuf {
    let base = Path::new("/dev/shm");
    let base = if base.is_dir() {
        base.to_owned()
    } else {
        std::env::temp_dir()
    };
    // Per thread: the corpus replay tests run targets side by side in one process.
    let thread = format!("{:?}", std::thread::current().id());
    let thread: String = thread.chars().filter(char::is_ascii_digit).collect();
    let dir = base.join(format!(
        "safetytwin-fuzz-{name}-{}-{thread}",
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

const SPOOL_MAX_BYTES: u64 = 1 << 20;

/// (b) The spool reader. The input lays out a spool directory as a daemon restarting after a
/// crash (or someone with write access to it) could leave it:
///
/// - byte 0: bit 0 writes an `acked` file, bits 1–2 the number of record files less one,
///   bit 3 puts their seqs at the top of the u64 range instead of at 1, 2, …
/// - with bit 0: a u16-LE-prefixed `acked` content;
/// - each record but the last: a u16-LE-prefixed file content; the last takes the rest.
///
/// The spool must open it without panicking, and then keep its promises: seqs only grow,
/// a record comes back exactly as it was framed or the read fails as corrupt, what is acked
/// stays gone after a reopen. Each payload then goes through the replayer's decode.
pub fn spool(data: &[u8]) {
    let dir = scratch("spool");
    let mut input = Input(data);
    let layout = input.byte();
    let acked_text = (layout & 1 != 0).then(|| input.chunk());
    let records = usize::from((layout >> 1) & 3) + 1;
    let first_seq = if layout & 8 != 0 {
        u64::MAX - records as u64 + 1
    } else {
        1
    };
    if let Some(text) = acked_text {
        fs::write(dir.join("acked"), text).expect("write acked");
    }
    let mut seqs = Vec::new();
    for i in 0..records {
        let content = if i + 1 == records {
            input.rest()
        } else {
            input.chunk()
        };
        let seq = first_seq + i as u64;
        fs::write(dir.join(format!("{seq:020}.batch")), content).expect("write record");
        seqs.push(seq);
    }

    let Ok(mut spool) = Spool::open(&dir, SPOOL_MAX_BYTES) else {
        return;
    };
    let acked = spool.acked();
    // What open left in place: a record it cannot follow (seq u64::MAX) or an unreadable
    // `acked` is moved to quarantine/, never fatal.
    let kept: Vec<u64> = fs::read_dir(&dir)
        .expect("list the spool")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".batch")?.parse().ok()
        })
        .collect();
    assert!(
        spool.next_seq() > acked && kept.iter().all(|s| spool.next_seq() > *s),
        "next seq {} not above acked {acked} and every record kept {kept:?} (of {seqs:?})",
        spool.next_seq()
    );
    assert_eq!(spool.depth().batches, kept.len() as u64);
    if let Ok(pending) = spool.pending_after(acked) {
        for (seq, payload) in &pending {
            assert!(*seq > acked);
            if let Ok(w) = v1::DeltaBatch::decode(payload.as_slice()) {
                let _ = batch_from_wire(w);
            }
        }
    }
    let next = spool.next_seq();
    let Ok(_) = spool.push(b"fuzz") else {
        return;
    };
    assert!(spool.next_seq() > next, "push did not advance the seq");
    let Ok(()) = spool.ack(next) else {
        return;
    };
    drop(spool);
    let mut reopened = Spool::open(&dir, SPOOL_MAX_BYTES).expect("a spool we just wrote reopens");
    assert_eq!(reopened.acked(), next.max(acked), "acked seq went back");
    assert!(reopened.next_seq() > next);
    let left = reopened.pending_after(0).unwrap_or_default();
    assert!(
        left.iter().all(|(s, _)| *s > next),
        "acked records came back"
    );
    let _ = fs::remove_dir_all(&dir);
}

/// (c) The BTF reader: parse, then look up the members the daemon needs and every pair of
/// names the input itself holds (so the fuzzer can reach the member search by spelling the
/// names it declares).
pub fn btf(data: &[u8]) {
    let Ok(btf) = safetytwin_daemon::btf::Btf::parse(data) else {
        return;
    };
    let _ = safetytwin_daemon::offsets::resolve(&btf, "fuzz");
    let names: Vec<&str> = data
        .split(|b| *b == 0)
        .filter_map(|s| std::str::from_utf8(s).ok())
        .filter(|s| {
            (1..64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
        .take(16)
        .collect();
    for strukt in &names {
        for member in &names {
            if let Ok(off) = btf.member_offset(strukt, member) {
                // A byte offset, so it came from a bit offset that fits in a u32.
                assert!(off <= u32::MAX / 8, "{strukt}.{member} at byte {off}");
            }
        }
    }
}

/// (d) The twin plan, driven the way the applier drives it: a `DeltaBatch` and the model
/// after it (u16-LE-prefixed, then the rest as a `HostState`), each through the wire decode
/// and `convert`, then `plan` with the default exclusions. The plan is handed to a guest as
/// `rm` arguments, tar entries and `systemctl` arguments, so:
///
/// - every path it removes or writes is one `paths::check` accepts (absolute, normalized, no
///   control characters) — so none starts with `-` either;
/// - every unit it acts on is a plain unit name, not an option (`-`) nor a path (`/`);
/// - each changed path ends up exactly once in `remove`, `write` or `skipped`;
/// - the archive holds exactly `write`, in order, each entry relative and without `..`;
/// - `units` is sorted without duplicates, and the health check expects exactly the started
///   and restarted ones.
pub fn plan(data: &[u8]) {
    use safetytwin_twin::vm::plan::{Skip, Verb, default_exclude, plan};

    let mut input = Input(data);
    let batch_bytes = input.chunk();
    let model_bytes = input.rest();
    let Ok(batch) = v1::DeltaBatch::decode(batch_bytes).map(batch_from_wire) else {
        return;
    };
    let Ok(batch) = batch else { return };
    let Ok(Ok(after)) = v1::HostState::decode(model_bytes).map(model_from_wire) else {
        return;
    };
    let p = plan(&batch.delta, &after, &default_exclude(), 0);

    for path in p.remove.iter().chain(&p.write) {
        assert!(
            paths::check(path).is_ok(),
            "plan step on an unchecked path {path:?}: {:?}",
            paths::check(path)
        );
    }
    // Every account reaching the guest's scripts is one the model may hold: no name that
    // could pass for an option, no field that is not what the account files allow.
    let a = &p.accounts;
    for u in &a.users {
        assert!(safetytwin_model::accounts::check_user(u).is_ok(), "{u:?}");
    }
    for g in &a.groups {
        assert!(safetytwin_model::accounts::check_group(g).is_ok(), "{g:?}");
    }
    for n in a.delete_users.iter().chain(&a.delete_groups) {
        assert!(safetytwin_model::accounts::check_name(n).is_ok(), "{n:?}");
    }
    for (name, _) in &p.units {
        assert!(
            !name.is_empty() && !name.starts_with('-') && !name.contains('/'),
            "systemctl argument {name:?} is not a unit name"
        );
    }
    assert_eq!(
        // `skipped` holds units and accounts too; only paths count here.
        p.remove.len()
            + p.write.len()
            + p.skipped
                .iter()
                .filter(|(_, why)| !matches!(why, Skip::BadUnitName | Skip::BadAccount))
                .count(),
        batch.delta.files.len(),
        "a changed path was dropped or doubled: remove {:?}, write {:?}, skipped {:?}",
        p.remove,
        p.write,
        p.skipped
    );
    let removed = batch
        .delta
        .files
        .iter()
        .filter(|f| matches!(f, FileDelta::Remove { .. }))
        .count();
    assert!(p.remove.len() <= removed);

    let mut archive = tar::Archive::new(p.archive.as_slice());
    let entries: Vec<String> = archive
        .entries()
        .expect("the plan's archive reads")
        .map(|e| {
            let e = e.expect("the plan's archive entry reads");
            let path = e.path().expect("entry path").into_owned();
            assert!(
                path.is_relative()
                    && path
                        .components()
                        .all(|c| matches!(c, std::path::Component::Normal(_))),
                "archive entry {path:?} escapes the root"
            );
            path.to_string_lossy().into_owned()
        })
        .collect();
    let expected: Vec<&str> = p.write.iter().map(|w| w.trim_start_matches('/')).collect();
    assert_eq!(
        entries, expected,
        "archive entries differ from the planned writes"
    );

    assert!(
        p.units.windows(2).all(|w| w[0].0 < w[1].0),
        "units not sorted and unique: {:?}",
        p.units
    );
    let active: Vec<&String> = p
        .units
        .iter()
        .filter(|(_, v)| *v != Verb::Stop)
        .map(|(n, _)| n)
        .collect();
    assert_eq!(p.expect_active.iter().collect::<Vec<_>>(), active);
}

/// (e) The configuration file: the input as the TOML of `--config FILE`, checked against every
/// subcommand of the daemon's real command line. What `config_args` accepts it promises the
/// command will accept too: the expanded command line may only fail on relations between
/// flags (a required flag missing, two that conflict), never on a flag or value the check let
/// through, nor turn into help or version output (a service that exits 0 instead of running).
pub fn config(data: &[u8]) {
    use clap::{CommandFactory, error::ErrorKind};

    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let cmd = daemon_main::Cli::command().args_override_self(true);
    let path = Path::new("/etc/safetytwin/fuzz.toml");
    for sub in cmd.get_subcommands() {
        let Ok(args) = safetytwin_cli::config_args(sub, path, text) else {
            continue;
        };
        let mut argv: Vec<OsString> = vec!["safetytwin-daemon".into(), sub.get_name().into()];
        argv.extend(args);
        if let Err(e) = cmd.clone().try_get_matches_from(&argv) {
            assert!(
                matches!(
                    e.kind(),
                    ErrorKind::MissingRequiredArgument | ErrorKind::ArgumentConflict
                ),
                "config_args accepted {text:?} but `{}` refuses {argv:?}: {e}",
                sub.get_name()
            );
        }
    }
}

/// (f) The host's own files as the daemon reads them at a cut: dpkg's status file, passwd,
/// group, shadow and os-release (each a chunk of the input). Whatever they hold, the parsers
/// return only packages, accounts and a release the model may hold (names no tool could take
/// for an option), and nothing of the shadow file but each password's state reaches the model.
pub fn host(data: &[u8]) {
    use safetytwin_model::{accounts, os, packages};

    let mut input = Input(data);
    let [status, passwd, group, shadow] =
        [(); 4].map(|()| String::from_utf8_lossy(input.chunk()).into_owned());
    let release = String::from_utf8_lossy(input.rest()).into_owned();

    let read = packages::parse_status(&status);
    for (key, p) in &read.packages {
        assert!(packages::check(p).is_ok(), "unchecked package {p:?}");
        assert_eq!(*key, p.key());
    }
    let a = accounts::parse(&passwd, &group, Some(&shadow));
    for (name, u) in &a.users {
        assert!(accounts::check_user(u).is_ok(), "unchecked user {u:?}");
        assert_eq!(*name, u.name);
    }
    for (name, g) in &a.groups {
        assert!(accounts::check_group(g).is_ok(), "unchecked group {g:?}");
        assert_eq!(*name, g.name);
    }
    // A password field of the shadow file (a hash) appears in the model only if the other
    // files hold the same text themselves.
    let model = format!("{:?}", (&a.users, &a.groups));
    for line in shadow.lines() {
        if let Some(hash) = line.split(':').nth(1).filter(|h| h.len() >= 8)
            && !passwd.contains(hash)
            && !group.contains(hash)
        {
            assert!(
                !model.contains(hash),
                "a shadow field reached the model: {hash:?}"
            );
        }
    }
    if let Some(r) = os::parse(&release) {
        assert!(os::check(&r).is_ok(), "unchecked release {r:?}");
    }
}

#[cfg(test)]
mod seeds;

#[cfg(test)]
mod tests {
    //! Every committed corpus and crash-regression file through its target, on stable Rust:
    //! what the long fuzz runs found stays fixed without a fuzzer installed.

    use super::*;

    fn replay(target: &str, run: fn(&[u8])) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = 0;
        for dir in [
            root.join("corpus").join(target),
            root.join("regressions").join(target),
        ] {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let path = entry.expect("corpus entry").path();
                let data = fs::read(&path).expect("corpus file");
                let outcome = std::panic::catch_unwind(|| run(&data));
                assert!(outcome.is_ok(), "{target}: {} fails", path.display());
                files += 1;
            }
        }
        assert!(files > 0, "no corpus for {target}");
    }

    #[test]
    fn wire_corpus() {
        replay("wire", wire);
    }

    #[test]
    fn spool_corpus() {
        replay("spool", spool);
    }

    #[test]
    fn btf_corpus() {
        replay("btf", btf);
    }

    #[test]
    fn plan_corpus() {
        replay("plan", plan);
    }

    #[test]
    fn config_corpus() {
        replay("config", config);
    }

    #[test]
    fn host_corpus() {
        replay("host", host);
    }
}
