//! Privileged: `safetytwin-daemon deltas --json` puts each change, made the way people and
//! tools make it (including writes through an fd opened windows earlier and still held), into the next
//! batch with its exact absolute path and final content; files
//! created and removed inside a window, and paths outside the watched trees, never appear; a
//! secret's content never leaves the daemon.

mod common;

use std::{
    collections::BTreeMap,
    ffi::CString,
    fs,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use common::sh;
use serde_json::Value;

/// Every path's last upsert across the batches (removed paths dropped): what a replayer has.
fn files(lines: &[Value]) -> BTreeMap<String, Value> {
    let mut state = BTreeMap::new();
    for batch in lines.iter().filter(|v| v["kind"] == "batch") {
        for f in batch["files"].as_array().unwrap() {
            let path = f["path"].as_str().unwrap().to_owned();
            if f["op"] == "upsert" {
                state.insert(path, f.clone());
            } else {
                state.remove(&path);
            }
        }
    }
    state
}

fn paths_in_batches(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .filter(|v| v["kind"] == "batch")
        .flat_map(|b| b["files"].as_array().unwrap().iter())
        .map(|f| f["path"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn each_change_is_in_the_next_batch_with_its_final_content() {
    if !common::privileged("each_change_is_in_the_next_batch_with_its_final_content") {
        return;
    }
    let marker = common::marker("st-deltas");
    let dir = PathBuf::from(format!("/etc/{marker}"));
    let outside = PathBuf::from(format!("/tmp/{marker}"));
    let unit = format!("{marker}.service");
    let unit_file = format!("/etc/systemd/system/{unit}");
    let wants = format!("/etc/systemd/system/multi-user.target.wants/{unit}");
    fs::create_dir_all(dir.join("tls")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::create_dir_all("/etc/systemd/system/multi-user.target.wants").unwrap();
    let d = dir.display().to_string();
    let root = Path::new("/");
    let mut s = common::TraceSession::start_deltas();

    let content = |s: &mut common::TraceSession, path: &str| -> Option<String> {
        let f = files(s.next_batch()).remove(path)?;
        Some(f["content"].as_str().unwrap_or("<none>").to_owned())
    };

    sh(&format!("echo hello > {d}/x.conf"), root);
    assert_eq!(
        content(&mut s, &format!("{d}/x.conf")).as_deref(),
        Some("hello\n")
    );

    sh(&format!("sed -i s/hello/world/ {d}/x.conf"), root);
    assert_eq!(
        content(&mut s, &format!("{d}/x.conf")).as_deref(),
        Some("world\n")
    );

    sh(
        &format!("echo v2 > {d}/x.conf.tmp && mv {d}/x.conf.tmp {d}/x.conf"),
        root,
    );
    assert_eq!(
        content(&mut s, &format!("{d}/x.conf")).as_deref(),
        Some("v2\n")
    );

    sh("mv x.conf y.conf", &dir);
    assert_eq!(content(&mut s, &format!("{d}/x.conf")), None);
    assert_eq!(
        content(&mut s, &format!("{d}/y.conf")).as_deref(),
        Some("v2\n")
    );

    {
        let dfd = fs::File::open(&dir).unwrap();
        let (from, to) = (
            CString::new("y.conf").unwrap(),
            CString::new("z.conf").unwrap(),
        );
        // SAFETY: valid fd and NUL-terminated names.
        let rc =
            unsafe { libc::renameat(dfd.as_raw_fd(), from.as_ptr(), dfd.as_raw_fd(), to.as_ptr()) };
        assert_eq!(rc, 0, "renameat: {}", std::io::Error::last_os_error());
    }
    assert_eq!(content(&mut s, &format!("{d}/y.conf")), None);
    assert_eq!(
        content(&mut s, &format!("{d}/z.conf")).as_deref(),
        Some("v2\n")
    );

    sh(&format!("cp {d}/z.conf {d}/c.conf"), root);
    assert_eq!(
        content(&mut s, &format!("{d}/c.conf")).as_deref(),
        Some("v2\n")
    );

    sh(&format!("echo more | tee -a {d}/c.conf > /dev/null"), root);
    assert_eq!(
        content(&mut s, &format!("{d}/c.conf")).as_deref(),
        Some("v2\nmore\n")
    );

    sh(&format!("truncate -s 0 {d}/c.conf"), root);
    assert_eq!(content(&mut s, &format!("{d}/c.conf")).as_deref(), Some(""));

    sh(
        &format!("chmod 640 {d}/c.conf && chown 65534:65534 {d}/c.conf"),
        root,
    );
    let c = files(s.next_batch())
        .remove(&format!("{d}/c.conf"))
        .unwrap();
    assert_eq!(
        (c["mode"].clone(), c["uid"].clone(), c["gid"].clone()),
        (0o640.into(), 65534.into(), 65534.into())
    );

    sh(
        &format!(
            "printf '[Service]\\nExecStart=/bin/sleep infinity\\n' > {unit_file} && \
             cd /etc/systemd/system/multi-user.target.wants && ln -s ../{unit} {unit}"
        ),
        root,
    );
    let lines = s.next_batch().to_vec();
    let f = files(&lines);
    assert_eq!(f[&wants]["type"], "symlink");
    assert_eq!(f[&wants]["link_target"], format!("../{unit}"));
    let unit_delta = lines
        .iter()
        .filter(|v| v["kind"] == "batch")
        .flat_map(|b| b["units"].as_array().unwrap().iter())
        .rfind(|u| u["unit"] == unit.as_str())
        .expect("unit delta")
        .clone();
    assert_eq!(unit_delta["fragment_path"], unit_file.as_str());
    assert_eq!(unit_delta["enabled_by"], serde_json::json!([wants]));

    {
        // Writes through an fd held open across windows: each window's writes are in its batch.
        use std::io::Write;
        let held = format!("{d}/held.log");
        let mut f = fs::File::create(&held).unwrap();
        f.write_all(b"one\n").unwrap();
        assert_eq!(content(&mut s, &held).as_deref(), Some("one\n"));
        f.write_all(b"two\n").unwrap();
        assert_eq!(content(&mut s, &held).as_deref(), Some("one\ntwo\n"));
        // Two cuts later only `/proc/PID/fd` says the file is still open, and it is read
        // again at every cut while it is (a write also dirties its inode).
        s.next_batch();
        s.next_batch();
        f.write_all(b"three\n").unwrap();
        let want = "one\ntwo\nthree\n";
        let got = (0..3).find_map(|_| content(&mut s, &held).filter(|c| c == want));
        assert_eq!(
            got.as_deref(),
            Some(want),
            "a write through an fd held open for three windows was not read"
        );
    }

    sh(&format!("rm {d}/c.conf"), root);
    assert_eq!(content(&mut s, &format!("{d}/c.conf")), None);

    // Created empty and never written: no probe sees it (opens are not traced and the new
    // inode has no name when it is dirtied); its directory's time moved, and the cut lists it.
    sh(&format!(": > {d}/tls/flag"), root);
    assert_eq!(
        content(&mut s, &format!("{d}/tls/flag")).as_deref(),
        Some(""),
        "a file created empty is not in the next batch"
    );

    // Created and removed within one window; outside the watched trees.
    sh(
        &format!("echo t > {d}/brief.conf && rm {d}/brief.conf"),
        root,
    );
    sh(
        "echo x > a.conf && mv a.conf b.conf && chmod 600 b.conf",
        &outside,
    );

    // A secret: metadata and hash, never the content.
    sh(
        &format!("echo TOP-SECRET-{marker} > {d}/tls/site.key"),
        root,
    );
    let key = files(s.next_batch())
        .remove(&format!("{d}/tls/site.key"))
        .unwrap();
    assert_eq!(key["content_state"], "redacted");
    assert_eq!(key["content"], Value::Null);
    assert_eq!(key["size"], format!("TOP-SECRET-{marker}\n").len());
    assert_eq!(key["sha256"].as_str().map(str::len), Some(64));

    fs::remove_file(&wants).unwrap();
    fs::remove_file(&unit_file).unwrap();
    let lines = s.finish();
    fs::remove_dir_all(&dir).unwrap();
    fs::remove_dir_all(&outside).unwrap();

    let all = paths_in_batches(&lines);
    assert!(
        !all.iter().any(|p| p.ends_with("/brief.conf")),
        "brief.conf appeared"
    );
    assert!(
        !all.iter().any(|p| p.starts_with("/tmp/")),
        "a /tmp path appeared"
    );
    let raw: String = lines.iter().map(|v| v.to_string()).collect();
    assert!(
        !raw.contains("TOP-SECRET"),
        "secret content left the daemon"
    );
    let (_, _, dropped) = common::final_drops(&lines);
    assert_eq!(dropped, 0);
}
