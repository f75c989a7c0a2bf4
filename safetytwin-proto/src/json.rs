//! The JSON shape of deltas and models, for people and scripts: the daemon's `deltas --json`
//! lines and the replayer CLI's `--json` output print the same objects, so a script written
//! against one reads the other. The twin's status and snapshots have one JSON shape too, which
//! the HTTP API serves and the CLI prints.

use safetytwin_model::{
    Batch, Content, DeltaBatch, FileDelta, FileKind, FileState, Group, GroupDelta, HostModel,
    Package, PackageDelta, ProcessDelta, UnitDelta, User, UserDelta,
};
use serde_json::{Map, Value, json};

use crate::v1;

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

/// A package as an upsert object.
pub fn package(p: &Package) -> Value {
    json!({
        "op": "upsert", "package": p.name, "arch": p.arch, "version": p.version,
        "status": p.status.as_str(),
    })
}

/// A user as an upsert object: the password's state, never a hash (the model has none).
pub fn user(u: &User) -> Value {
    json!({
        "op": "upsert", "user": u.name, "uid": u.uid, "gid": u.gid, "gecos": u.gecos,
        "home": u.home, "shell": u.shell, "password": u.password.as_str(),
    })
}

/// A group as an upsert object.
pub fn group(g: &Group) -> Value {
    json!({"op": "upsert", "group": g.name, "gid": g.gid, "members": g.members})
}

/// The changes of a batch: `files`, `units`, `processes`, `packages`, `users`, `groups`,
/// `os` (when the release changed) and `activity`.
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
    let packages: Vec<Value> = b
        .packages
        .iter()
        .map(|d| match d {
            PackageDelta::Upsert(p) => package(p),
            PackageDelta::Remove { name, arch } => {
                json!({"op": "remove", "package": name, "arch": arch})
            }
        })
        .collect();
    let users: Vec<Value> = b
        .users
        .iter()
        .map(|d| match d {
            UserDelta::Upsert(u) => user(u),
            UserDelta::Remove { name } => json!({"op": "remove", "user": name}),
        })
        .collect();
    let groups: Vec<Value> = b
        .groups
        .iter()
        .map(|d| match d {
            GroupDelta::Upsert(g) => group(g),
            GroupDelta::Remove { name } => json!({"op": "remove", "group": name}),
        })
        .collect();
    let a = &b.activity;
    let mut m = Map::new();
    m.insert("files".into(), files.into());
    m.insert("units".into(), units.into());
    m.insert("processes".into(), processes.into());
    m.insert("packages".into(), packages.into());
    m.insert("users".into(), users.into());
    m.insert("groups".into(), groups.into());
    if let Some(os) = &b.os {
        m.insert(
            "os".into(),
            json!({"id": os.id, "version_id": os.version_id, "codename": os.codename}),
        );
    }
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

/// `unix_ns` as RFC 3339 to the second, "-" for none.
pub fn rfc3339(unix_ns: i64) -> String {
    if unix_ns <= 0 {
        return "-".into();
    }
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_nanos(unix_ns as u64),
    )
    .to_string()
}

/// `Twin.Status`'s answer as JSON.
pub fn status(s: &v1::StatusResponse) -> Value {
    json!({
        "version": s.version, "hosts": s.hosts, "batches": s.batches,
        "uptime_s": s.uptime_seconds, "twin_backend": s.twin_backend,
        "twins": s.twins.iter().map(twin).collect::<Vec<_>>(),
    })
}

/// One twin of `Twin.Status`'s answer.
pub fn twin(t: &v1::TwinState) -> Value {
    json!({
        "host": t.host_id, "domain": t.domain_state,
        "applied_seq": t.applied_seq, "snapshot": t.snapshot,
        "held": t.held, "last_apply_seq": t.last_apply_seq,
        "last_apply_us": t.last_apply_micros,
        "last_apply_items": t.last_apply_items,
        "last_apply_steps": t.last_apply_steps.iter()
            .map(|s| json!({"step": s.name, "us": s.micros}))
            .collect::<Vec<_>>(),
        "owner": t.owner, "lease_ms": t.lease_ms, "lease_moves": t.lease_moves,
        "last_failure_seq": t.last_failure_seq,
        "last_failure": t.last_failure,
        "last_verify": t.last_verify.as_ref().map(|v| json!({
            "seq": v.seq, "differences": v.differences, "equal": v.equal,
            "by_design": v.by_design, "full": v.full, "unix_ns": v.unix_ns,
            "us": v.micros,
            "first": v.first.lines().collect::<Vec<_>>(),
        })),
    })
}

/// `Twin.Verify`'s answer as JSON: `equal` is true only without a difference.
pub fn verify(v: &v1::VerifyResponse) -> Value {
    json!({
        "host": v.host_id, "seq": v.seq, "equal": v.differences.is_empty(),
        "compared_equal": v.equal,
        "differences": v.differences.iter()
            .map(|d| json!({"kind": d.kind, "item": d.item, "host": d.host, "twin": d.twin}))
            .collect::<Vec<_>>(),
        "by_design": v.by_design.iter()
            .map(|b| json!({"reason": b.reason, "count": b.count}))
            .collect::<Vec<_>>(),
    })
}

/// A snapshot as JSON.
pub fn snapshot(s: &v1::Snapshot) -> Value {
    json!({"name": s.name, "host": s.host_id, "seq": s.seq,
           "created": rfc3339(s.created_unix_ns), "apply_us": s.apply_micros,
           "items": s.items})
}
