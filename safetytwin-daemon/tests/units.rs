//! Privileged: units start and stop through their cgroups. This host has no systemd, so the
//! test makes cgroups named exactly as systemd names them in the v2 hierarchy, moves a process
//! in, lets it exit and removes them; the daemon takes the same code path as on a systemd host.

mod common;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

fn cgroup2_root() -> Option<PathBuf> {
    safetytwin_daemon::procfs::cgroup2_mount()
}

/// Runs `sleep` inside the cgroup at `dir` and waits for it.
fn run_inside(dir: &Path) {
    let status = Command::new("/bin/sh")
        .args([
            "-c",
            "echo $$ > \"$1/cgroup.procs\" && exec sleep 0.2",
            "sh",
        ])
        .arg(dir)
        .status()
        .expect("run sh");
    assert!(status.success(), "moving into {} failed", dir.display());
}

#[test]
fn templated_service_in_nested_slice_starts_and_stops() {
    if !common::privileged("templated_service_in_nested_slice_starts_and_stops") {
        return;
    }
    let Some(root) = cgroup2_root() else {
        eprintln!("skipping: no cgroup v2 hierarchy mounted");
        return;
    };
    let tag = common::marker("st").replace('-', "");
    let slice = format!("st{tag}.slice");
    let inner = format!("st{tag}-getty.slice");
    let unit = format!("getty@tty{tag}.service");
    let scope = format!("run-{tag}.scope");
    let slice_dir = root.join(&slice);
    let unit_dir = slice_dir.join(&inner).join(&unit);
    let scope_dir = slice_dir.join(&scope);

    let session = common::TraceSession::start();
    fs::create_dir_all(&unit_dir).unwrap();
    fs::create_dir_all(&scope_dir).unwrap();
    run_inside(&unit_dir);
    run_inside(&scope_dir);
    for dir in [&unit_dir, &slice_dir.join(&inner), &scope_dir, &slice_dir] {
        fs::remove_dir(dir).unwrap();
    }
    let lines = session.finish();

    let unit_ops = |name: &str| -> Vec<(String, String)> {
        lines
            .iter()
            .filter(|v| v["kind"] == "unit" && v["unit"] == name)
            .map(|v| {
                (
                    v["op"].as_str().unwrap().to_owned(),
                    v["slice"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let start_stop = |slice: &str| {
        vec![
            ("start".to_owned(), slice.to_owned()),
            ("stop".to_owned(), slice.to_owned()),
        ]
    };
    assert_eq!(unit_ops(&unit), start_stop(&inner), "{unit}");
    assert_eq!(unit_ops(&scope), start_stop(&slice), "{scope}");
    assert_eq!(unit_ops(&inner), start_stop(&slice), "{inner}");
    // The top slice is populated once by the service and once by the scope.
    assert_eq!(unit_ops(&slice).len(), 4, "{slice}");

    let cgroup_path = format!("/{slice}/{inner}/{unit}");
    let ops: Vec<&Value> = lines
        .iter()
        .filter(|v| v["kind"] == "cgroup" && v["cgroup"] == cgroup_path.as_str())
        .collect();
    let names: Vec<&str> = ops.iter().map(|v| v["op"].as_str().unwrap()).collect();
    assert_eq!(names, ["mkdir", "attach", "rmdir"], "{cgroup_path}");
    assert!(ops.iter().all(|v| v["unit"] == unit.as_str()));
    common::final_drops(&lines);
}
