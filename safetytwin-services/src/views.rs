//! What the dashboard's pages read (`GET /api/v1/hosts…`), from domain values: a row per host
//! (freshness, twin, drift, losses), a line per batch (counts by kind, loss counters), the
//! unified text diff of the files two states disagree on, and the recent applies.
//!
//! Pure functions: the handlers in `http.rs` load, these shape. Every text they return is
//! bounded, since a page has to render it: a diff is cut at [`DIFF_MAX_BYTES`] and at most
//! [`DIFF_MAX_FILES`] files get one.

use safetytwin_model::{Batch, BatchHeader, Content, DeltaBatch, FileDelta, HostModel};
use safetytwin_twin::applier::LastApply;
use serde_json::{Value, json};

/// Longest unified diff of one file; beyond it the diff ends with a line saying so.
pub const DIFF_MAX_BYTES: usize = 64 * 1024;
/// Files of one diff answer that get a text diff; the others only their states.
pub const DIFF_MAX_FILES: usize = 200;
/// Most batches one timeline request returns.
pub const TIMELINE_MAX: usize = 500;

/// The number of changes of each kind in `delta`, and their sum.
pub fn counts(delta: &DeltaBatch) -> Value {
    let kinds = [
        ("files", delta.files.len()),
        ("units", delta.units.len()),
        ("processes", delta.processes.len()),
        ("packages", delta.packages.len()),
        ("users", delta.users.len()),
        ("groups", delta.groups.len()),
    ];
    let mut m: serde_json::Map<String, Value> = kinds
        .iter()
        .map(|(k, n)| ((*k).into(), (*n).into()))
        .collect();
    m.insert(
        "total".into(),
        kinds.iter().map(|(_, n)| n).sum::<usize>().into(),
    );
    Value::Object(m)
}

/// A header's loss counters: events the kernel produced, the daemon received, and dropped.
fn losses(h: &BatchHeader) -> Value {
    json!({"produced": h.produced, "received": h.received, "dropped": h.dropped})
}

/// One line of a host's timeline.
pub fn batch_line(b: &Batch) -> Value {
    let h = &b.header;
    json!({
        "seq": h.seq,
        "boot_id": h.boot_id,
        "window_start_unix_ns": h.window_start_unix_ns,
        "window_end_unix_ns": h.window_end_unix_ns,
        "resync": h.resync,
        "more": h.more,
        "losses": losses(h),
        "counts": counts(&b.delta),
    })
}

/// A host's row: its last batch (`None`: the header could not be read) and its twin as
/// `twin::twin_json` gives it (`None`: no twin backend).
pub fn host_row(
    host: &str,
    last_seq: u64,
    last: Option<&BatchHeader>,
    twin: Option<Value>,
) -> Value {
    json!({
        "host": host,
        "last_seq": last_seq,
        "last_unix_ns": last.map_or(0, |h| h.window_end_unix_ns),
        "boot_id": last.map(|h| h.boot_id.as_str()),
        "losses": last.map(losses),
        "twin": twin,
    })
}

/// The applies kept for a host (`Applier::applies`), oldest first: when, to which seq, how
/// long, how many items and each step's time.
pub fn applies(list: &[LastApply]) -> Value {
    Value::Array(
        list.iter()
            .map(|a| {
                json!({
                    "seq": a.seq,
                    "unix_ns": a.unix_ns,
                    "micros": a.took.as_micros() as u64,
                    "items": a.items,
                    "steps": a.steps.iter().map(|(name, t)| json!({
                        "name": name, "micros": t.as_micros() as u64,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

/// A file's text in a state, or why there is none to compare.
fn text<'a>(model: &'a HostModel, path: &str) -> Result<&'a str, &'static str> {
    match model.files.get(path).map(|f| &f.content) {
        None => Ok(""),
        Some(Content::Text(t)) => Ok(t),
        Some(Content::Redacted) => Err("redacted (a secret: its content is never stored)"),
        Some(Content::TooLarge) => Err("too large to carry"),
        Some(Content::Binary) => Err("binary"),
        Some(Content::None) => Err("no content (not a regular file)"),
    }
}

/// The unified diff of every file `delta` changes between `before` and `after`: path →
/// diff text, or the reason there is none (secret, binary, too large, or beyond
/// [`DIFF_MAX_FILES`]).
pub fn file_diffs(before: &HostModel, after: &HostModel, delta: &DeltaBatch) -> Value {
    let mut out = serde_json::Map::new();
    for (i, f) in delta.files.iter().enumerate() {
        let path = match f {
            FileDelta::Upsert { path, .. } | FileDelta::Remove { path } => path,
        };
        let entry = if i >= DIFF_MAX_FILES {
            json!({"note": format!("only the first {DIFF_MAX_FILES} files are compared")})
        } else {
            match (text(before, path), text(after, path)) {
                (Ok(a), Ok(b)) => json!({"unified": unified(path, a, b)}),
                (Err(why), _) | (_, Err(why)) => json!({"note": why}),
            }
        };
        out.insert(path.clone(), entry);
    }
    Value::Object(out)
}

/// `a` → `b` as a unified diff with three lines of context, at most [`DIFF_MAX_BYTES`].
pub fn unified(path: &str, a: &str, b: &str) -> String {
    let diff = similar::TextDiff::from_lines(a, b);
    let mut text = diff
        .unified_diff()
        .context_radius(3)
        .header(&format!("a{path}"), &format!("b{path}"))
        .to_string();
    if text.len() > DIFF_MAX_BYTES {
        let mut cut = DIFF_MAX_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("\n… (diff cut: longer than 64 KiB)\n");
    }
    text
}

#[cfg(test)]
mod tests {
    use safetytwin_model::fixtures;

    use super::*;

    fn model(files: &[(&str, &str)]) -> HostModel {
        let mut m = HostModel::default();
        for (path, text) in files {
            m.files.insert((*path).into(), fixtures::text(text));
        }
        m
    }

    #[test]
    fn a_changed_file_gets_a_unified_diff_and_a_secret_gets_none() {
        let before = model(&[("/etc/a.conf", "one\ntwo\nthree\n"), ("/etc/gone", "x\n")]);
        let mut after = model(&[("/etc/a.conf", "one\n2\nthree\n"), ("/etc/new", "fresh\n")]);
        let mut secret = fixtures::text("");
        secret.content = Content::Redacted;
        after.files.insert("/etc/shadow".into(), secret);
        let delta = before.diff(&after);
        let d = file_diffs(&before, &after, &delta);
        let a = d["/etc/a.conf"]["unified"].as_str().unwrap();
        assert!(a.starts_with("--- a/etc/a.conf\n+++ b/etc/a.conf\n"), "{a}");
        assert!(a.contains("-two\n+2\n") && a.contains(" one\n"), "{a}");
        assert!(
            d["/etc/new"]["unified"]
                .as_str()
                .unwrap()
                .contains("+fresh\n")
        );
        assert!(d["/etc/gone"]["unified"].as_str().unwrap().contains("-x\n"));
        assert!(
            d["/etc/shadow"]["note"]
                .as_str()
                .unwrap()
                .starts_with("redacted")
        );
        assert!(d["/etc/shadow"].get("unified").is_none());
    }

    #[test]
    fn diffs_are_bounded() {
        let big: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        let text = unified("/etc/big", "", &big);
        assert!(text.len() < DIFF_MAX_BYTES + 64, "{}", text.len());
        assert!(text.ends_with("longer than 64 KiB)\n"));

        let files: Vec<(String, String)> = (0..DIFF_MAX_FILES + 5)
            .map(|i| (format!("/etc/f{i:04}"), format!("{i}\n")))
            .collect();
        let after = model(
            &files
                .iter()
                .map(|(p, t)| (p.as_str(), t.as_str()))
                .collect::<Vec<_>>(),
        );
        let before = HostModel::default();
        let d = file_diffs(&before, &after, &before.diff(&after));
        let with_diff = d
            .as_object()
            .unwrap()
            .values()
            .filter(|v| v.get("unified").is_some())
            .count();
        assert_eq!(with_diff, DIFF_MAX_FILES);
        assert_eq!(d.as_object().unwrap().len(), DIFF_MAX_FILES + 5);
    }

    #[test]
    fn counts_add_up() {
        let after = model(&[("/etc/a", "a\n"), ("/etc/b", "b\n")]);
        let c = counts(&HostModel::default().diff(&after));
        assert_eq!(
            (c["files"].as_u64(), c["total"].as_u64()),
            (Some(2), Some(2))
        );
    }
}
