//! Privileged: config-file changes made the ways people and tools make them are reported with
//! their exact absolute paths, including relative paths resolved in the kernel against the cwd
//! or a dirfd; a change outside the watched trees produces nothing.

mod common;

use std::{
    ffi::CString,
    fs,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use common::sh;
use serde_json::Value;

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

#[test]
fn file_changes_are_reported_with_absolute_paths() {
    if !common::privileged("file_changes_are_reported_with_absolute_paths") {
        return;
    }
    let marker = common::marker("st-files");
    let dir = PathBuf::from(format!("/etc/{marker}"));
    let outside = PathBuf::from(format!("/tmp/{marker}"));
    fs::create_dir_all(&dir).unwrap();
    fs::create_dir_all(&outside).unwrap();
    let d = dir.display().to_string();
    let root = Path::new("/");

    let session = common::TraceSession::start();
    sh(&format!("echo hello > {d}/x.conf"), root);
    sh(&format!("sed -i s/hello/world/ {d}/x.conf"), root);
    sh(
        &format!("echo v2 > {d}/x.conf.tmp && mv {d}/x.conf.tmp {d}/x.conf"),
        root,
    );
    sh("mv x.conf y.conf", &dir);
    {
        // renameat(2) relative to a directory fd, from this process.
        let dfd = fs::File::open(&dir).unwrap();
        // SAFETY: valid fd and NUL-terminated names.
        let rc = unsafe {
            libc::renameat(
                dfd.as_raw_fd(),
                c("y.conf").as_ptr(),
                dfd.as_raw_fd(),
                c("z.conf").as_ptr(),
            )
        };
        assert_eq!(rc, 0, "renameat: {}", std::io::Error::last_os_error());
    }
    sh(&format!("cp {d}/z.conf {d}/c.conf"), root);
    sh(&format!("echo more | tee -a {d}/c.conf > /dev/null"), root);
    sh(&format!("truncate -s 0 {d}/c.conf"), root);
    sh(&format!("chmod 640 {d}/c.conf"), root);
    sh(&format!("chown 65534:65534 {d}/c.conf"), root);
    sh("mkdir -p systemd/system/multi-user.target.wants", &dir);
    sh(
        "printf '[Service]\\nExecStart=/bin/true\\n' > systemd/system/demo.service",
        &dir,
    );
    sh(
        "ln -s ../demo.service demo.service",
        &dir.join("systemd/system/multi-user.target.wants"),
    );
    sh(&format!("rm {d}/c.conf"), root);
    sh(
        "echo x > a.conf && mv a.conf b.conf && chmod 600 b.conf && rm b.conf",
        &outside,
    );
    let lines = session.finish();
    fs::remove_dir_all(&dir).unwrap();
    fs::remove_dir_all(&outside).unwrap();

    let ours: Vec<&Value> = lines
        .iter()
        .filter(|v| v["kind"] == "file")
        .filter(|v| {
            let mentions = |k: &str| v[k].as_str().is_some_and(|p| p.contains(&marker));
            mentions("path") || mentions("new_path")
        })
        .collect();
    assert!(
        !ours
            .iter()
            .any(|v| v["path"].as_str().unwrap().starts_with("/tmp/")),
        "a path outside the watched trees was reported"
    );

    let got: Vec<(String, String, String)> = ours
        .iter()
        .map(|v| {
            let s = |k: &str| v[k].as_str().unwrap_or("").to_owned();
            (s("op"), s("path"), s("new_path"))
        })
        .collect();
    // sed writes a temporary file with a random name next to the target and gives it the
    // original's owner with fchown(fd): the probe names the file by walking the fd's own path.
    let sed_tmp = got
        .iter()
        .find(|(op, p, _)| op == "chown" && p.starts_with(&format!("{d}/sed")))
        .map(|(_, p, _)| p.clone())
        .unwrap_or_else(|| panic!("no sed temporary file in {got:#?}"));
    let e = |op: &str, path: String, new: &str| (op.to_owned(), path, new.to_owned());
    // In this order; a write dirties its inode more than once (pages, times), and a file's
    // attributes or a rename dirty it too, so other `write`s come between.
    let want = vec![
        e("write", format!("{d}/x.conf"), ""),
        e("chown", sed_tmp.clone(), ""),
        e("write", sed_tmp.clone(), ""),
        e("rename", sed_tmp, &format!("{d}/x.conf")),
        e("write", format!("{d}/x.conf.tmp"), ""),
        e("rename", format!("{d}/x.conf.tmp"), &format!("{d}/x.conf")),
        e("rename", format!("{d}/x.conf"), &format!("{d}/y.conf")),
        e("rename", format!("{d}/y.conf"), &format!("{d}/z.conf")),
        // cp, tee -a, truncate (open + ftruncate): each dirties the file.
        e("write", format!("{d}/c.conf"), ""),
        e("write", format!("{d}/c.conf"), ""),
        e("write", format!("{d}/c.conf"), ""),
        e("chmod", format!("{d}/c.conf"), ""),
        e("chown", format!("{d}/c.conf"), ""),
        e("mkdir", format!("{d}/systemd"), ""),
        e("mkdir", format!("{d}/systemd/system"), ""),
        e(
            "mkdir",
            format!("{d}/systemd/system/multi-user.target.wants"),
            "",
        ),
        e("write", format!("{d}/systemd/system/demo.service"), ""),
        e(
            "symlink",
            format!("{d}/systemd/system/multi-user.target.wants/demo.service"),
            "../demo.service",
        ),
        e("unlink", format!("{d}/c.conf"), ""),
    ];
    let mut rest = got.iter();
    for w in &want {
        assert!(
            rest.any(|g| g == w),
            "{w:?} missing, or out of order, in {got:#?}"
        );
    }
    // Nothing but these ops: opens are not traced, a write is its dirtied inode.
    for (op, path, _) in &got {
        assert!(
            [
                "write", "chown", "chmod", "rename", "mkdir", "symlink", "unlink"
            ]
            .contains(&op.as_str()),
            "{op} {path}"
        );
    }

    let chmod = ours.iter().find(|v| v["op"] == "chmod").unwrap();
    assert_eq!(chmod["mode"], 0o640);
    let chown = ours.iter().rfind(|v| v["op"] == "chown").unwrap();
    assert_eq!(
        (chown["owner_uid"].clone(), chown["owner_gid"].clone()),
        (65534.into(), 65534.into())
    );
    let symlink = ours.iter().find(|v| v["op"] == "symlink").unwrap();
    assert_eq!(symlink["comm"], "ln");
    common::final_drops(&lines);
}
