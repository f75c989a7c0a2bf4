//! `build-image`: the twin's guest image, a Debian bookworm root file system in a qcow2 plus
//! the kernel and a small initrd for direct kernel boot, cached by the hash of its inputs.
//!
//! Each image lives in `<out>/<hash>/` (`rootfs.qcow2`, `vmlinuz`, `initrd.img`,
//! `packages.txt`, `image.json`); `<out>/latest` points at the newest. An image is built in
//! `<out>/.build-<hash>-<pid>/` and renamed into place only when complete, so a directory named
//! by a hash is always a whole image. The hash covers everything that decides the bytes: the
//! suite, mirror, package list, `image/configure.sh`, the kernel command line, the file system
//! parameters, the tool versions and `FORMAT`. The mirror's package versions are the one input
//! it cannot see (a point release changes them); `packages.txt` records them, and `--force`
//! rebuilds.
//!
//! Every twin runs on its own qcow2 overlay whose backing file is `rootfs.qcow2`, so the base is
//! written once, made read-only (0444) and never opened for writing again.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail};

use crate::{is_root, run_cmd, step, twin_packages};

pub const DEFAULT_OUT: &str = "/var/cache/safetytwin/image";

/// Bump when the build changes in a way the other inputs do not show.
const FORMAT: u32 = 1;
/// The release built unless `--release` names another; the hosts' release must match it.
pub const DEFAULT_RELEASE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
/// On top of minbase: an init, udev (it starts the guest agent), the kernel, the agent, and the
/// tools applying configuration needs (`ps`, `ip`).
const INCLUDE: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "kmod",
    "linux-image-amd64",
    "initramfs-tools",
    "zstd",
    "qemu-guest-agent",
    "procps",
    "iproute2",
];
pub const CMDLINE: &str = "root=/dev/vda rw console=ttyS0 quiet";
/// The file system's size, which is also the disk size each twin sees; its overlay grows only
/// with what the twin writes.
const SIZE_MIB: u64 = 4096;
/// Fixed so that equal inputs give equal bytes (and a stable root=UUID=, should one want it).
const FS_UUID: &str = "5a4e7e71-7715-4a1e-9d0c-7317e7a1d15c";
const HASH_SEED: &str = "0b1d5e6e-2c0f-4c57-8a53-56b7f1f0a1e5";
/// Every timestamp in the image is clamped to this (2025-01-01T00:00:00Z).
const SOURCE_DATE_EPOCH: u64 = 1_735_689_600;
const CONFIGURE: &str = include_str!("../image/configure.sh");

/// A built image: its directory (the replayer's backend reads the rest from there).
pub struct Image {
    pub dir: PathBuf,
}

impl Image {
    fn at(dir: PathBuf) -> Self {
        Image { dir }
    }
}

fn mkfs_options() -> Vec<String> {
    [
        "-q",
        "-F",
        "-t",
        "ext4",
        "-b",
        "4096",
        "-m",
        "0",
        "-L",
        "twin-root",
        "-U",
        FS_UUID,
        // Inode tables and journal are zeroed now (zeros cost nothing in the qcow2) rather
        // than by each twin's kernel in the background, into its overlay.
        "-E",
        &format!("hash_seed={HASH_SEED},root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Builds the image of Debian `release` into `out` or reuses the one with the same input
/// hash; `latest` and `latest-<release>` point at it.
pub fn build(out: &Path, force: bool, release: &str) -> Result<Image> {
    if release.is_empty() || !release.bytes().all(|c| c.is_ascii_lowercase()) {
        bail!("--release {release:?}: a Debian codename (bookworm, trixie) is lowercase letters");
    }
    twin_packages::install()?;
    let hash = input_hash(release)?;
    let dir = out.join(&hash);
    if dir.join("image.json").exists() && !force {
        eprintln!("    image {hash}: cached in {} (reused)", dir.display());
        point_latest(out, &hash, release)?;
        return Ok(Image::at(dir));
    }
    if !is_root() {
        bail!("building the image needs root (debootstrap, chroot)");
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    remove_stale_builds(out)?;
    let tmp = out.join(format!(".build-{hash}-{}", std::process::id()));
    let started = Instant::now();
    eprintln!("==> build-image {hash} into {}", dir.display());
    let result = build_into(&tmp, out, release);
    if let Err(e) = result {
        let _ = remove_tree(&tmp);
        return Err(e);
    }
    write_metadata(&tmp, &hash, started.elapsed(), release)?;
    if dir.exists() {
        // --force, or a concurrent build of the same inputs finished first.
        let old = out.join(format!(".old-{hash}-{}", std::process::id()));
        std::fs::rename(&dir, &old)?;
        std::fs::rename(&tmp, &dir)?;
        remove_tree(&old)?;
    } else {
        std::fs::rename(&tmp, &dir)?;
    }
    point_latest(out, &hash, release)?;
    eprintln!(
        "    build-image: {} in {:.0} s",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(Image::at(dir))
}

fn build_into(tmp: &Path, out: &Path, release: &str) -> Result<()> {
    let root = tmp.join("root");
    std::fs::create_dir_all(&root)?;
    let debs = out.join(".debs");
    std::fs::create_dir_all(&debs)?;
    step(
        &format!("debootstrap --variant=minbase {release} (a few minutes)"),
        || {
            let mut cmd = Command::new("debootstrap");
            cmd.arg("--variant=minbase")
                .arg(format!("--include={}", INCLUDE.join(",")))
                .arg("--components=main")
                .arg(format!("--cache-dir={}", debs.display()))
                .arg(release)
                .arg(&root)
                .arg(MIRROR);
            run_summarised(&mut cmd)
        },
    )?;
    step(
        "configure the guest (image/configure.sh in the chroot)",
        || {
            let mut cmd = chroot(&root, &["/bin/sh", "-s"]);
            cmd.stdin(Stdio::piped());
            let mut child = spawn_piped(&mut cmd)?;
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(CONFIGURE.as_bytes())?;
            pass_through(child)
        },
    )?;
    step("copy out the kernel and initrd", || {
        let boot = root.join("boot");
        let mut kernels: Vec<String> = std::fs::read_dir(&boot)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix("vmlinuz-")
                    .map(str::to_owned)
            })
            .collect();
        kernels.sort();
        let [version] = kernels.as_slice() else {
            bail!("expected one kernel in /boot, found {kernels:?}");
        };
        std::fs::copy(boot.join(format!("vmlinuz-{version}")), tmp.join("vmlinuz"))?;
        std::fs::copy(
            boot.join(format!("initrd.img-{version}")),
            tmp.join("initrd.img"),
        )?;
        std::fs::write(tmp.join("kernel-version"), format!("{version}\n"))?;
        eprintln!("    kernel {version}");
        Ok(())
    })?;
    step("package manifest (dpkg-query -W)", || {
        let out = chroot(
            &root,
            &[
                "dpkg-query",
                "-W",
                "-f=${Package}\\t${Version}\\t${Architecture}\\n",
            ],
        )
        .output()?;
        if !out.status.success() {
            bail!(
                "dpkg-query failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut lines: Vec<&str> = std::str::from_utf8(&out.stdout)?.lines().collect();
        lines.sort_unstable();
        std::fs::write(tmp.join("packages.txt"), lines.join("\n") + "\n")?;
        eprintln!("    {} packages", lines.len());
        Ok(())
    })?;
    step("clamp timestamps to SOURCE_DATE_EPOCH", || {
        run_cmd(
            Command::new("find")
                .arg(&root)
                .args(["-newermt", &format!("@{SOURCE_DATE_EPOCH}")])
                .args([
                    "-exec",
                    "touch",
                    "--no-dereference",
                    &format!("--date=@{SOURCE_DATE_EPOCH}"),
                    "{}",
                    "+",
                ]),
        )
    })?;
    let raw = tmp.join("rootfs.raw");
    step(
        &format!("mkfs.ext4 -d (a {SIZE_MIB} MiB file system, no loop mount)"),
        || {
            run_cmd(
                Command::new("mkfs.ext4")
                    .args(mkfs_options())
                    .arg("-d")
                    .arg(&root)
                    .arg(&raw)
                    .arg(format!("{SIZE_MIB}M"))
                    .env("E2FSPROGS_FAKE_TIME", SOURCE_DATE_EPOCH.to_string())
                    .env("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH.to_string())
                    // mke2fs names the file it creates even with -q.
                    .stdout(Stdio::null()),
            )
        },
    )?;
    step("qemu-img convert -O qcow2", || {
        let qcow2 = tmp.join("rootfs.qcow2");
        run_cmd(
            Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", "qcow2", "-o", "compat=1.1"])
                .arg(&raw)
                .arg(&qcow2),
        )?;
        std::fs::remove_file(&raw)?;
        Ok(())
    })?;
    step("remove the build tree", || remove_tree(&root))?;
    use std::os::unix::fs::PermissionsExt;
    for file in ["rootfs.qcow2", "vmlinuz", "initrd.img"] {
        // Read-only: the base is shared by every twin's overlay and must never change.
        std::fs::set_permissions(tmp.join(file), std::fs::Permissions::from_mode(0o444))?;
    }
    std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// A command run inside the image root with a clean, fixed environment.
fn chroot(root: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("chroot");
    cmd.arg(root)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/root")
        .env("LC_ALL", "C.UTF-8")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH.to_string());
    cmd
}

fn spawn_piped(cmd: &mut Command) -> Result<std::process::Child> {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))
}

/// The child's stdout and stderr, line by line, as they come.
fn lines(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let out = child
        .stdout
        .take()
        .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
    let err = child
        .stderr
        .take()
        .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
    for stream in [out, err].into_iter().flatten() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    rx
}

fn pass_through(mut child: std::process::Child) -> Result<()> {
    for line in lines(&mut child) {
        eprintln!("    | {line}");
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("exited with {status}");
    }
    Ok(())
}

/// Runs debootstrap, which prints a line per package and phase (hundreds), as one line per
/// phase with its count, plus a heartbeat every 15 s, so a slow mirror still looks alive.
fn run_summarised(cmd: &mut Command) -> Result<()> {
    let started = Instant::now();
    let mut child = spawn_piped(cmd)?;
    let rx = lines(&mut child);
    let mut phase = String::new();
    let mut count = 0usize;
    let mut last_print = Instant::now();
    let mut tail: Vec<String> = Vec::new();
    let flush = |phase: &str, count: usize| {
        if count > 0 {
            eprintln!(
                "    [{:>4.0} s] {phase} {count} packages",
                started.elapsed().as_secs_f64()
            );
        }
    };
    loop {
        let line = match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                eprintln!(
                    "    [{:>4.0} s] … still {} ({count} so far)",
                    started.elapsed().as_secs_f64(),
                    if phase.is_empty() { "working" } else { &phase }
                );
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        tail.push(line.clone());
        if tail.len() > 40 {
            tail.remove(0);
        }
        let verb = line
            .strip_prefix("I: ")
            .and_then(|rest| rest.split_whitespace().next())
            // debootstrap alternates Retrieving and Validating per package: one phase.
            .and_then(|v| match v {
                "Retrieving" | "Validating" => Some("Retrieving"),
                "Extracting" | "Unpacking" | "Configuring" => Some(v),
                _ => None,
            });
        match verb {
            Some(v) => {
                if v != phase {
                    flush(&phase, count);
                    phase = v.to_owned();
                    count = 0;
                }
                count += 1;
                if last_print.elapsed() > Duration::from_secs(15) {
                    eprintln!(
                        "    [{:>4.0} s] {phase} … {count} so far",
                        started.elapsed().as_secs_f64()
                    );
                    last_print = Instant::now();
                }
            }
            None => {
                flush(&phase, count);
                phase.clear();
                count = 0;
                eprintln!("    [{:>4.0} s] {line}", started.elapsed().as_secs_f64());
                last_print = Instant::now();
            }
        }
    }
    flush(&phase, count);
    let status = child.wait()?;
    if !status.success() {
        for line in &tail {
            eprintln!("    | {line}");
        }
        bail!("debootstrap exited with {status}");
    }
    Ok(())
}

/// SHA-256 over every input that decides the image's bytes, shortened to 16 hex digits.
fn input_hash(release: &str) -> Result<String> {
    let mut text = format!(
        "format {FORMAT}\nsuite {release}\nmirror {MIRROR}\nvariant minbase\ninclude {}\n\
         cmdline {CMDLINE}\nsize_mib {SIZE_MIB}\nmkfs {}\nepoch {SOURCE_DATE_EPOCH}\n",
        INCLUDE.join(","),
        mkfs_options().join(" "),
    );
    for tool in [
        &["debootstrap", "--version"][..],
        &["mkfs.ext4", "-V"],
        &["qemu-img", "--version"],
    ] {
        let out = Command::new(tool[0])
            .args(&tool[1..])
            .output()
            .with_context(|| format!("cannot run {}", tool[0]))?;
        let version = String::from_utf8_lossy(if out.stdout.is_empty() {
            &out.stderr
        } else {
            &out.stdout
        })
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
        text.push_str(&format!("tool {version}\n"));
    }
    text.push_str("configure.sh\n");
    text.push_str(CONFIGURE);
    Ok(sha256(text.as_bytes())?[..16].to_owned())
}

fn sha256(data: &[u8]) -> Result<String> {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run sha256sum")?;
    child.stdin.take().expect("piped").write_all(data)?;
    let out = child.wait_with_output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .context("sha256sum printed nothing")?
        .to_owned())
}

fn sha256_file(path: &Path) -> Result<String> {
    let out = Command::new("sha256sum").arg(path).output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .context("sha256sum printed nothing")?
        .to_owned())
}

fn write_metadata(tmp: &Path, hash: &str, took: Duration, release: &str) -> Result<()> {
    let kernel_version = std::fs::read_to_string(tmp.join("kernel-version"))?;
    let mut files = Vec::new();
    for (role, name) in [
        ("rootfs", "rootfs.qcow2"),
        ("kernel", "vmlinuz"),
        ("initrd", "initrd.img"),
        ("packages", "packages.txt"),
    ] {
        let path = tmp.join(name);
        files.push(format!(
            "    \"{role}\": {{ \"file\": \"{name}\", \"bytes\": {}, \"sha256\": \"{}\" }}",
            std::fs::metadata(&path)?.len(),
            sha256_file(&path)?
        ));
    }
    let built = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_secs();
    let json = format!(
        "{{\n  \"format\": {FORMAT},\n  \"input_hash\": \"{hash}\",\n  \"suite\": \"{release}\",\n  \
         \"mirror\": \"{MIRROR}\",\n  \"kernel_version\": \"{}\",\n  \"cmdline\": \"{CMDLINE}\",\n  \
         \"rootfs_format\": \"qcow2\",\n  \"virtual_size_bytes\": {},\n  \
         \"fs_uuid\": \"{FS_UUID}\",\n  \"source_date_epoch\": {SOURCE_DATE_EPOCH},\n  \
         \"built_unix\": {built},\n  \"build_seconds\": {:.0},\n  \"files\": {{\n{}\n  }}\n}}\n",
        kernel_version.trim(),
        SIZE_MIB << 20,
        took.as_secs_f64(),
        files.join(",\n"),
    );
    std::fs::remove_file(tmp.join("kernel-version"))?;
    std::fs::write(tmp.join("image.json"), json)?;
    Ok(())
}

/// Points `<out>/latest` at `hash`, replacing the link atomically.
fn point_latest(out: &Path, hash: &str, release: &str) -> Result<()> {
    for name in ["latest".to_owned(), format!("latest-{release}")] {
        let latest = out.join(&name);
        if std::fs::read_link(&latest).is_ok_and(|t| t == Path::new(hash)) {
            continue;
        }
        let tmp = out.join(format!(".{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(hash, &tmp)?;
        std::fs::rename(&tmp, &latest)?;
    }
    Ok(())
}

/// Removes what interrupted builds left behind (their process is gone).
fn remove_stale_builds(out: &Path) -> Result<()> {
    for entry in std::fs::read_dir(out)?.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name
            .strip_prefix(".build-")
            .or_else(|| name.strip_prefix(".old-"))
        else {
            continue;
        };
        let pid = rest.rsplit('-').next().unwrap_or_default();
        if Path::new("/proc").join(pid).exists() {
            continue;
        }
        eprintln!("    removing {name} (left by an interrupted build)");
        remove_tree(&entry.path())?;
    }
    Ok(())
}

/// Removes a build tree, first unmounting anything debootstrap left mounted inside it (an
/// interrupted debootstrap leaves /proc and /sys mounted in the target), so the removal can
/// never reach into the host's /proc, /sys or /dev.
fn remove_tree(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let path = path.canonicalize()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    let mut inside: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| Path::new(m).starts_with(&path))
        .collect();
    // Deepest first.
    inside.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for mount in inside {
        eprintln!("    umount {mount}");
        run_cmd(Command::new("umount").arg("--lazy").arg(mount))?;
    }
    std::fs::remove_dir_all(&path).with_context(|| format!("cannot remove {}", path.display()))
}
