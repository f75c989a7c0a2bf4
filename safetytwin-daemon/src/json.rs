//! The `trace --json` line format: one object per event. Serialization stays here, at the edge.

use std::time::SystemTime;

use safetytwin_model::{DeltaBatch, escape::escape};
use serde_json::{Value, json};

use safetytwin_common::events::{cgroup::CgroupOp, file::FileOp};
use safetytwin_model::units::unit_of_cgroup;

use crate::{
    cgroups::CgroupIndex,
    events::{CgroupChange, HostEvent, ProcInfo},
    tracer::Stats,
};

fn ts(info: &ProcInfo) -> String {
    humantime::format_rfc3339_nanos(info.ts).to_string()
}

/// One event as a JSON object; `cgroups` names the unit of a file change's writer.
pub fn event(ev: &HostEvent, cgroups: &CgroupIndex) -> Value {
    let i = ev.info();
    match ev {
        HostEvent::Exec(e) => json!({
            "kind": "exec", "pid": i.pid, "tid": i.tid, "ppid": i.ppid, "uid": i.uid,
            "gid": i.gid, "comm": i.comm, "filename": e.filename, "argv": e.argv,
            "argv_truncated": e.argv_truncated, "cgroup_id": i.cgroup_id, "ts": ts(i),
            "snapshot": e.snapshot,
        }),
        HostEvent::Exit(e) => json!({
            "kind": "exit", "pid": i.pid, "tid": i.tid, "ppid": i.ppid, "uid": i.uid,
            "gid": i.gid, "comm": i.comm, "exit_code": e.exit_code(), "signal": e.signal(),
            "cgroup_id": i.cgroup_id, "ts": ts(i),
        }),
        HostEvent::Fork(e) => json!({
            "kind": "fork", "pid": i.pid, "ppid": i.ppid, "creator_pid": e.creator_pid,
            "uid": i.uid, "gid": i.gid, "comm": i.comm, "cgroup_id": i.cgroup_id, "ts": ts(i),
        }),
        HostEvent::File(f) => json!({
            "kind": "file", "op": f.op_name(), "path": f.path, "new_path": f.new_path,
            "pid": i.pid, "comm": i.comm, "uid": i.uid, "gid": i.gid,
            "unit": cgroups.unit_of(i.cgroup_id).map(|u| u.name), "cgroup_id": i.cgroup_id,
            "mode": matches!(f.op, Some(FileOp::Chmod | FileOp::Mkdir)).then_some(f.mode),
            "owner_uid": f.owner_uid, "owner_gid": f.owner_gid, "truncated": f.truncated,
            "ts": ts(i),
        }),
        HostEvent::Cgroup(c) => cgroup(c, ts(i)),
    }
}

/// A populated/unpopulated transition of a unit's own cgroup is the unit starting or
/// stopping (`kind: unit`); everything else is a plain `kind: cgroup` line.
fn cgroup(c: &CgroupChange, ts: String) -> Value {
    let unit = unit_of_cgroup(&c.path);
    let own = unit.as_ref().filter(|u| u.cgroup == c.path);
    match (c.op, own) {
        (Some(CgroupOp::Populated), Some(u)) => json!({
            "kind": "unit", "op": if c.value != 0 { "start" } else { "stop" }, "unit": u.name,
            "type": u.unit_type.as_str(), "slice": u.slice, "cgroup": c.path,
            "cgroup_id": c.cgroup_id, "ts": ts,
        }),
        (op, _) => json!({
            "kind": "cgroup",
            "op": match op {
                Some(CgroupOp::Mkdir) => "mkdir",
                Some(CgroupOp::Rmdir) => "rmdir",
                Some(CgroupOp::Attach) => "attach",
                Some(CgroupOp::Populated) if c.value != 0 => "populated",
                Some(CgroupOp::Populated) => "unpopulated",
                None => "unknown",
            },
            "cgroup": c.path, "cgroup_id": c.cgroup_id, "unit": unit.map(|u| u.name),
            "pid": (op == Some(CgroupOp::Attach)).then_some(c.value), "ts": ts,
        }),
    }
}

/// One cut batch as a JSON object: the shared delta shape plus the window and counters.
pub fn batch(seq: u64, start: SystemTime, end: SystemTime, b: &DeltaBatch, stats: &Stats) -> Value {
    let mut m = safetytwin_proto::json::delta(b);
    m.insert("kind".into(), "batch".into());
    m.insert("seq".into(), seq.into());
    m.insert(
        "window_start".into(),
        humantime::format_rfc3339_nanos(start).to_string().into(),
    );
    m.insert(
        "window_end".into(),
        humantime::format_rfc3339_nanos(end).to_string().into(),
    );
    m.insert(
        "counters".into(),
        json!({"produced": stats.produced, "received": stats.received, "dropped": stats.dropped}),
    );
    Value::Object(m)
}

/// One cut batch as a line of text.
pub fn human_batch(seq: u64, b: &DeltaBatch, stats: &Stats) -> String {
    let a = &b.activity;
    format!(
        "batch {seq}: files={} units={} processes={} packages={} users={} groups={} started={} \
         exited={} short_lived={} dropped={}",
        b.files.len(),
        b.units.len(),
        b.processes.len(),
        b.packages.len(),
        b.users.len(),
        b.groups.len(),
        a.started,
        a.exited,
        a.short_lived,
        stats.dropped
    )
}

/// The loss counters.
pub fn drops(stats: &Stats) -> Value {
    json!({
        "kind": "drops", "produced": stats.produced, "received": stats.received,
        "dropped": stats.dropped,
    })
}

/// One event as a human-readable line. Paths, argv and names come from any process on the host,
/// so the whole line is escaped: a file named `\x1b[2J` prints as that text.
pub fn human(ev: &HostEvent) -> String {
    let i = ev.info();
    let t = humantime::format_rfc3339_millis(i.ts);
    let line = match ev {
        HostEvent::Exec(e) => format!(
            "{t} {} pid={} ppid={} uid={} {} {}",
            if e.snapshot { "proc" } else { "exec" },
            i.pid,
            i.ppid,
            i.uid,
            e.filename,
            e.argv.join(" ")
        ),
        HostEvent::Exit(e) => match (e.exit_code(), e.signal()) {
            (Some(code), _) => format!("{t} exit pid={} {} code={code}", i.pid, i.comm),
            (_, Some(sig)) => format!("{t} exit pid={} {} signal={sig}", i.pid, i.comm),
            _ => format!("{t} exit pid={} {} status={}", i.pid, i.comm, e.status),
        },
        HostEvent::Fork(_) => format!("{t} fork pid={} ppid={} {}", i.pid, i.ppid, i.comm),
        HostEvent::File(f) => format!(
            "{t} file {} {}{} pid={} {}",
            f.op_name(),
            f.path,
            f.new_path
                .as_deref()
                .map(|p| format!(" -> {p}"))
                .unwrap_or_default(),
            i.pid,
            i.comm
        ),
        HostEvent::Cgroup(c) => {
            let v = cgroup(c, String::new());
            let unit = v["unit"].as_str().unwrap_or("-");
            format!(
                "{t} {} {} {} {unit}",
                v["kind"].as_str().unwrap_or(""),
                v["op"].as_str().unwrap_or(""),
                c.path
            )
        }
    };
    escape(&line).into_owned()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::events::{Exec, Exit};

    fn info() -> ProcInfo {
        ProcInfo {
            pid: 5,
            tid: 5,
            ppid: 1,
            uid: 0,
            gid: 0,
            cgroup_id: 9,
            comm: "true".into(),
            ts: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
        }
    }

    #[test]
    fn exec_and_exit_fields() {
        let cgroups = CgroupIndex::default();
        let exec = event(
            &HostEvent::Exec(Exec {
                info: info(),
                filename: "/bin/true".into(),
                argv: vec!["true".into(), "x".into()],
                argv_truncated: false,
                snapshot: false,
            }),
            &cgroups,
        );
        assert_eq!(exec["kind"], "exec");
        assert_eq!(exec["argv"], json!(["true", "x"]));
        assert_eq!(exec["ts"], "2023-11-14T22:13:20.123456789Z");
        let exit = event(
            &HostEvent::Exit(Exit {
                info: info(),
                status: 7 << 8,
            }),
            &cgroups,
        );
        assert_eq!(exit["exit_code"], 7);
        assert_eq!(exit["signal"], Value::Null);
    }

    #[test]
    fn local_hostile_paths_print_escaped_and_json_stays_exact() {
        let ev = HostEvent::Exec(Exec {
            info: ProcInfo {
                comm: "x\x07".into(),
                ..info()
            },
            filename: "/tmp/\x1b[2J\rcat".into(),
            argv: vec!["cat".into(), "\x1b]0;owned\x07".into()],
            argv_truncated: false,
            snapshot: false,
        });
        let line = human(&ev);
        assert!(line.contains("/tmp/\\x1b[2J\\rcat"), "{line}");
        assert!(line.contains("\\x1b]0;owned\\x07"), "{line}");
        assert!(!line.chars().any(char::is_control), "{line:?}");
        // JSON keeps the exact bytes, written by serde as \u escapes.
        let json = event(&ev, &CgroupIndex::default());
        assert_eq!(json["filename"], "/tmp/\x1b[2J\rcat");
        let text = json.to_string();
        assert!(text.contains("\\u001b[2J\\r"), "{text}");
        assert!(!text.chars().any(char::is_control), "{text:?}");
    }
}
