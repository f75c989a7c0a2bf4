//! The start-up scan of /proc: every process that exists before the probes saw it, as
//! snapshot exec events, so the process table is complete before the first kernel event.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::SystemTime,
};

use crate::events::{Exec, ProcInfo, exec::split_argv};

/// Fields of `/proc/PID/stat` the scan needs.
#[derive(Debug, PartialEq, Eq)]
pub struct Stat {
    /// The command name between the parentheses.
    pub comm: String,
    /// Field 4.
    pub ppid: u32,
}

/// Parses `/proc/PID/stat`. The command name may contain spaces and parentheses, so the
/// fields after it are found from the last `)`.
pub fn parse_stat(line: &str) -> Option<Stat> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let comm = line.get(open + 1..close)?.to_owned();
    let mut rest = line.get(close + 1..)?.split_whitespace();
    let _state = rest.next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some(Stat { comm, ppid })
}

/// Real uid and gid from `/proc/PID/status`.
pub fn parse_status_ids(status: &str) -> Option<(u32, u32)> {
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((field("Uid:")?, field("Gid:")?))
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` or, on hybrid hosts,
/// `/sys/fs/cgroup/unified`), from a mountinfo text.
pub fn cgroup2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mount_point = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

/// The cgroup v2 mount point of this host.
pub fn cgroup2_mount() -> Option<PathBuf> {
    cgroup2_mount_in(&fs::read_to_string("/proc/self/mountinfo").ok()?)
}

/// The device number the kernel keeps for the filesystem of mount `mnt_id`
/// (`super_block.s_dev`, `MAJOR << 20 | MINOR`), from a mountinfo text. This is the superblock's
/// number even where `stat` reports another (btrfs subvolumes).
pub fn mount_dev_in(mountinfo: &str, mnt_id: u64) -> Option<u32> {
    mountinfo.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let id: u64 = fields.next()?.parse().ok()?;
        if id != mnt_id {
            return None;
        }
        let (major, minor) = fields.nth(1)?.split_once(':')?;
        let (major, minor): (u32, u32) = (major.parse().ok()?, minor.parse().ok()?);
        (major < 1 << 12 && minor < 1 << 20).then_some(major << 20 | minor)
    })
}

/// The kernel's identity of directory `path`: its filesystem's device number (see
/// [`mount_dev_in`], with `mountinfo` this process's) and its inode number. `None` when it does
/// not exist or is no directory.
pub fn dir_identity(path: &Path, mountinfo: &str) -> Option<(u32, u64)> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: a NUL-terminated path and a buffer of the size statx writes.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            0,
            libc::STATX_INO | libc::STATX_TYPE | libc::STATX_MNT_ID,
            stx.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: statx succeeded and filled it.
    let stx = unsafe { stx.assume_init() };
    if u32::from(stx.stx_mode) & libc::S_IFMT != libc::S_IFDIR
        || stx.stx_mask & libc::STATX_MNT_ID == 0
    {
        return None;
    }
    let dev = mount_dev_in(mountinfo, stx.stx_mnt_id)?;
    Some((dev, stx.stx_ino))
}

/// The hierarchy whose cgroups are systemd units: cgroup v2 (id 0) when it is mounted (unified
/// and hybrid hosts), else the legacy `name=systemd` hierarchy named in `proc_self_cgroup`.
pub fn unit_hierarchy_in(cgroup2_mounted: bool, proc_self_cgroup: &str) -> u32 {
    if cgroup2_mounted {
        return 0;
    }
    proc_self_cgroup
        .lines()
        .find_map(|l| {
            let (id, rest) = l.split_once(':')?;
            rest.starts_with("name=systemd:").then(|| id.parse().ok())?
        })
        .unwrap_or(0)
}

/// [`unit_hierarchy_in`] for this host.
pub fn unit_hierarchy() -> u32 {
    unit_hierarchy_in(
        cgroup2_mount().is_some(),
        &fs::read_to_string("/proc/self/cgroup").unwrap_or_default(),
    )
}

/// Every cgroup below `root` (a hierarchy mount) as (id, path relative to the root); the id
/// is the directory's inode number, as the kernel reports it.
pub fn scan_cgroups(root: &Path) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::from("/"))];
    while let Some((dir, rel)) = stack.pop() {
        let Ok(meta) = fs::metadata(&dir) else {
            continue;
        };
        out.push((meta.ino(), rel.clone()));
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let name = entry.file_name().to_string_lossy().into_owned();
                let child = if rel == "/" {
                    format!("/{name}")
                } else {
                    format!("{rel}/{name}")
                };
                stack.push((entry.path(), child));
            }
        }
    }
    out
}

/// Whether the cgroup v2 directory `dir` has tasks (its `cgroup.events` says `populated 1`).
pub fn cgroup_populated(dir: &Path) -> bool {
    fs::read_to_string(dir.join("cgroup.events"))
        .is_ok_and(|text| text.lines().any(|l| l.trim() == "populated 1"))
}

/// The v2 cgroup path from `/proc/PID/cgroup` (the `0::` line).
pub fn parse_cgroup_v2(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// Scans `proc_root` (normally `/proc`). Processes that vanish mid-scan are skipped.
pub fn scan(proc_root: &Path, cgroup2: Option<&Path>, now: SystemTime) -> Vec<Exec> {
    let Ok(dir) = fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut out: Vec<Exec> = dir
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            read_process(&entry.path(), pid, cgroup2, now)
        })
        .collect();
    out.sort_by_key(|e| e.info.pid);
    out
}

fn read_process(dir: &Path, pid: u32, cgroup2: Option<&Path>, now: SystemTime) -> Option<Exec> {
    let stat = parse_stat(&fs::read_to_string(dir.join("stat")).ok()?)?;
    let (uid, gid) = parse_status_ids(&fs::read_to_string(dir.join("status")).ok()?)?;
    let cmdline = fs::read(dir.join("cmdline")).unwrap_or_default();
    let filename = fs::read_link(dir.join("exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cgroup_id = cgroup2
        .and_then(|root| {
            let text = fs::read_to_string(dir.join("cgroup")).ok()?;
            let rel = parse_cgroup_v2(&text)?.trim_start_matches('/');
            Some(fs::metadata(root.join(rel)).ok()?.ino())
        })
        .unwrap_or(0);
    Some(Exec {
        info: ProcInfo {
            pid,
            tid: pid,
            ppid: stat.ppid,
            uid,
            gid,
            cgroup_id,
            comm: stat.comm,
            ts: now,
        },
        filename,
        argv: split_argv(&cmdline),
        argv_truncated: false,
        snapshot: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mounts_device_is_the_kernels_encoding() {
        let mi = "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                  35 22 0:29 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
                  36 22 8:1048575 / /x rw - ext4 /dev/x rw\n\
                  37 22 4096:1 / /y rw - ext4 /dev/y rw\n";
        assert_eq!(mount_dev_in(mi, 22), Some(254 << 20));
        assert_eq!(mount_dev_in(mi, 35), Some(29));
        assert_eq!(mount_dev_in(mi, 36), Some(8 << 20 | 1048575));
        // Beyond the kernel's 12 major bits: not a number the kernel could hold.
        assert_eq!(mount_dev_in(mi, 37), None);
        assert_eq!(mount_dev_in(mi, 99), None);
        assert_eq!(mount_dev_in("garbage\n22", 22), None);
    }

    /// On this machine: `/` is a directory with an identity, a file is not a tree.
    #[test]
    fn the_roots_identity_matches_stat() {
        use std::os::unix::fs::MetadataExt;
        let mi = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let (dev, ino) = dir_identity(Path::new("/"), &mi).expect("/ has an identity");
        assert_eq!(ino, fs::metadata("/").unwrap().ino());
        assert_ne!(dev, 0);
        assert_eq!(dir_identity(Path::new("/proc/self/status"), &mi), None);
        assert_eq!(dir_identity(Path::new("/no/such/tree"), &mi), None);
    }

    #[test]
    fn stat_with_parentheses_in_comm() {
        let s = parse_stat("42 (a) b (c)) S 7 42 42 0 -1").unwrap();
        assert_eq!(
            s,
            Stat {
                comm: "a) b (c)".into(),
                ppid: 7
            }
        );
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn status_and_cgroup_and_mountinfo() {
        let status = "Name:\tx\nUid:\t1000\t1000\t1000\t1000\nGid:\t50\t50\t50\t50\n";
        assert_eq!(parse_status_ids(status), Some((1000, 50)));
        assert_eq!(
            parse_cgroup_v2("12:pids:/\n0::/system.slice/x.service\n"),
            Some("/system.slice/x.service")
        );
        let mi = "30 24 0:26 / /sys/fs/cgroup/unified rw,nosuid shared:9 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount_in(mi),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn unit_hierarchy_prefers_v2() {
        let hybrid = "9:name=systemd:/init.scope\n4:cpu:/\n0::/init.scope\n";
        assert_eq!(unit_hierarchy_in(true, hybrid), 0);
        assert_eq!(unit_hierarchy_in(false, hybrid), 9);
        assert_eq!(unit_hierarchy_in(false, "4:cpu:/\n"), 0);
    }

    #[test]
    fn scan_finds_this_process_with_its_parent() {
        let procs = scan(
            Path::new("/proc"),
            cgroup2_mount().as_deref(),
            SystemTime::now(),
        );
        let me = procs
            .iter()
            .find(|e| e.info.pid == std::process::id())
            .expect("own pid in /proc scan");
        assert_eq!(me.info.ppid, std::os::unix::process::parent_id());
        assert!(me.snapshot);
        assert_eq!(
            me.filename,
            std::env::current_exe().unwrap().to_string_lossy()
        );
    }
}
