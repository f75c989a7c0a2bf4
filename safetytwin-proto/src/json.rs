//! The JSON shape of deltas and models, for people and scripts: the daemon's `deltas --json`
//! lines and the replayer CLI's `--json` output print the same objects, so a script written
//! against one reads the other.

use safetytwin_model::{
    Batch, Content, DeltaBatch, FileDelta, FileKind, FileState, HostModel, ProcessDelta, UnitDelta,
};
use serde_json::{Map, Value, json};

/// A file's state as an upsert object.
pub fn file_state(path: &str, f: &FileState) -> Value {
    let (content, state) = match &f.content {
        Content::Text(t) => (Some(t.as_str()), "text"),
        Content::Redacted => (None, "redacted"),
        Content::TooLarge => (None, "too_large"),
        Content::Binary => (None, "binary"),
        Content::None => (None, "none"),
    };
    json!({
        "op": "upsert", "path": path,
        "type": match f.kind {
            FileKind::Regular => "regular",
            FileKind::Directory => "directory",
            FileKind::Symlink => "symlink",
            FileKind::Other => "other",
        },
        "mode": f.mode, "uid": f.uid, "gid": f.gid, "size": f.size, "sha256": f.sha256,
        "content": content, "content_state": state, "link_target": f.link_target,
    })
}

/// The changes of a batch: `files`, `units`, `processes` and `activity`.
pub fn delta(b: &DeltaBatch) -> Map<String, Value> {
    let files: Vec<Value> = b
        .files
        .iter()
        .map(|d| match d {
            FileDelta::Upsert { path, state } => file_state(path, state),
            FileDelta::Remove { path } => json!({"op": "remove", "path": path}),
        })
        .collect();
    let units: Vec<Value> = b
        .units
        .iter()
        .map(|d| match d {
            UnitDelta::Upsert(u) => json!({
                "op": "upsert", "unit": u.name, "type": u.unit_type.map(|t| t.as_str()),
                "active": u.active(), "cgroup": u.runtime.as_ref().map(|r| &r.cgroup),
                "main_pid": u.runtime.as_ref().and_then(|r| r.main_pid),
                "fragment_path": u.fragment_path, "dropins": u.dropins,
                "enabled_by": u.enabled_by,
            }),
            UnitDelta::Remove { name } => json!({"op": "remove", "unit": name}),
        })
        .collect();
    let processes: Vec<Value> = b
        .processes
        .iter()
        .map(|d| match d {
            ProcessDelta::Upsert(p) => json!({
                "op": "upsert", "pid": p.pid, "ppid": p.ppid, "uid": p.uid, "gid": p.gid,
                "comm": p.comm, "exe": p.exe, "argv": p.argv, "cgroup_id": p.cgroup_id,
            }),
            ProcessDelta::Remove { pid } => json!({"op": "remove", "pid": pid}),
        })
        .collect();
    let a = &b.activity;
    let mut m = Map::new();
    m.insert("files".into(), files.into());
    m.insert("units".into(), units.into());
    m.insert("processes".into(), processes.into());
    m.insert(
        "activity".into(),
        json!({
            "started": a.started, "exited": a.exited, "short_lived": a.short_lived,
            "changes": a.changes,
        }),
    );
    m
}

/// A stored batch: its changes ([`delta`]), where it sits (`host`, `seq`) and how it folds:
/// `resync` (it restates the model from nothing), `more` (a part of a larger batch, continued
/// at the next seq).
pub fn batch(b: &Batch) -> Map<String, Value> {
    let mut m = delta(&b.delta);
    m.insert("host".into(), b.header.host_id.clone().into());
    m.insert("seq".into(), b.header.seq.into());
    m.insert("resync".into(), b.header.resync.into());
    m.insert("more".into(), b.header.more.into());
    m
}

/// A whole model, as the upserts that would rebuild it.
pub fn model(m: &HostModel) -> Map<String, Value> {
    let mut out = delta(&m.restate());
    out.remove("activity");
    out
}
