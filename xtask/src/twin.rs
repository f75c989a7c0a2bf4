//! The twin's host side: `setup-twin` (QEMU and libvirt from bookworm-backports, the daemons)
//! and `check-twin`, which boots a throw-away twin from the cached image under libvirt and
//! exercises its guest agent the way the replayer's backend will.
//!
//! bookworm's QEMU 7.2 cannot be installed next to the preinstalled qemu-utils 10.0 from
//! backports, so QEMU and libvirt 11.3 come from bookworm-backports. Backports is pinned per
//! package: only the names in `PINNED` move, the rest of the system stays on stable.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{apt_get, image, libc_geteuid, missing_packages, run_cmd, step};

const SOURCES_PATH: &str = "/etc/apt/sources.list.d/safetytwin-backports.sources";
const SOURCES: &str = "\
# Written by `cargo xtask setup-twin`: QEMU and libvirt for the twin. Only the packages pinned
# in /etc/apt/preferences.d/safetytwin-twin are taken from here.
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

const PREFERENCES_PATH: &str = "/etc/apt/preferences.d/safetytwin-twin";

/// Backports packages the twin needs, and the exact-version dependencies they drag along
/// (qemu-system-x86 wants `qemu-system-common (= same version)` and a newer seabios; every
/// libvirt part wants the same libvirt0). A dependency missing here would be resolved from
/// stable and the install would fail with an unmet `=` dependency.
const PINNED: &[&str] = &[
    "qemu-system-x86",
    "qemu-system-common",
    "qemu-system-data",
    "qemu-system-gui",
    "qemu-block-extra",
    "qemu-utils",
    "seabios",
    "libvirt0",
    "libvirt-common",
    "libvirt-clients",
    "libvirt-dev",
    "libvirt-l10n",
    "libvirt-daemon",
    "libvirt-daemon-common",
    "libvirt-daemon-log",
    "libvirt-daemon-lock",
    "libvirt-daemon-plugin-lockd",
    "libvirt-daemon-system",
    "libvirt-daemon-system-systemd",
    "libvirt-daemon-config-*",
    "libvirt-daemon-driver-*",
];

/// What the twin needs on the host. Recommends are not installed: they would add swtpm, OVMF,
/// passt, spice and a dozen storage drivers the twin never uses.
const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-block-extra",
    "libvirt-daemon-system",
    "libvirt-clients",
    "libvirt-dev",
    "pkg-config",
    "debootstrap",
    "e2fsprogs",
];

pub const LIBVIRT_URI: &str = "qemu:///system";

/// The domain the replayer will define for each twin; `check` fills it in exactly as the
/// replayer must, so a passing check proves the template.
const DOMAIN_TEMPLATE: &str = include_str!("../../replayer/src/twin/domain.xml");

/// `setup-twin`: packages, then the daemons, then a libvirt that answers.
pub fn setup() -> Result<()> {
    install()?;
    start_libvirt()
}

/// Writes the backports source and the pins, then installs what dpkg lacks; apt is not run at
/// all when everything is in place.
pub fn install() -> Result<()> {
    let preferences = format!(
        "# Written by `cargo xtask setup-twin`: these packages, and only these, come from\n\
         # bookworm-backports.\nPackage: {}\nPin: release n=bookworm-backports\n\
         Pin-Priority: 990\n",
        PINNED.join(" ")
    );
    let configured = holds(SOURCES_PATH, SOURCES) && holds(PREFERENCES_PATH, &preferences);
    let missing = missing_packages(PACKAGES);
    if configured && missing.is_empty() {
        eprintln!(
            "    twin packages: all installed, backports pinned ({})",
            PACKAGES.join(" ")
        );
        return Ok(());
    }
    require_root("installing the twin's packages")?;
    let sources_changed = write_if_changed(SOURCES_PATH, SOURCES)?;
    write_if_changed(PREFERENCES_PATH, &preferences)?;
    if missing.is_empty() {
        if sources_changed {
            step("apt-get update (bookworm-backports added)", || {
                apt_get(&["update", "-q"])
            })?;
        }
        return Ok(());
    }
    step(&format!("apt-get install {}", missing.join(" ")), || {
        apt_get(&["update", "-q"])?;
        let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
        args.extend(&missing);
        apt_get(&args)
    })?;
    let still = missing_packages(PACKAGES);
    if !still.is_empty() {
        bail!("apt-get finished but these are still not installed: {still:?}");
    }
    Ok(())
}

fn holds(path: &str, text: &str) -> bool {
    std::fs::read_to_string(path).ok().as_deref() == Some(text)
}

/// Writes `text` to `path` unless it already holds exactly that; returns whether it wrote.
fn write_if_changed(path: &str, text: &str) -> Result<bool> {
    if holds(path, text) {
        return Ok(false);
    }
    eprintln!("    writing {path}");
    std::fs::write(path, text).with_context(|| format!("cannot write {path}"))?;
    Ok(true)
}

fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        bail!("{what} needs root");
    }
    Ok(())
}

/// Starts virtlogd and libvirtd when they are not running (systemd is not PID 1 everywhere
/// this runs, so socket activation cannot be relied on) and waits until libvirt answers.
pub fn start_libvirt() -> Result<()> {
    if virsh_answers() {
        eprintln!("    libvirt answers on {LIBVIRT_URI}");
        return Ok(());
    }
    require_root("starting libvirtd")?;
    step("start virtlogd and libvirtd", || {
        // virtlogd first: libvirtd hands it every domain's console log.
        for daemon in ["virtlogd", "libvirtd"] {
            if process_running(daemon) {
                eprintln!("    {daemon}: already running");
                continue;
            }
            eprintln!("    {daemon} -d");
            run_cmd(
                Command::new(daemon)
                    .arg("-d")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )?;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while !virsh_answers() {
            if Instant::now() > deadline {
                bail!("libvirtd started but {LIBVIRT_URI} does not answer after 60 s");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(())
    })?;
    let out = Command::new("virsh")
        .args(["-c", LIBVIRT_URI, "version"])
        .output()?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if !line.trim().is_empty() {
            eprintln!("    {line}");
        }
    }
    Ok(())
}

fn virsh_answers() -> bool {
    Command::new("virsh")
        .args(["-c", LIBVIRT_URI, "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn process_running(name: &str) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.filter_map(|e| e.ok()).any(|e| {
        std::fs::read_to_string(e.path().join("comm")).is_ok_and(|comm| comm.trim_end() == name)
    })
}

/// Chooses the domain type: `kvm` only where KVM can run an unmodified guest kernel, that is
/// with hardware virtualisation (vmx/svm) and kvm_intel or kvm_amd loaded. A host that is itself
/// a VM may offer /dev/kvm through a para-virtualised KVM (kvm_pvm) that only runs guests built
/// for it, so /dev/kvm alone proves nothing; everything else gets TCG (`qemu`).
pub fn detect_domain_type() -> (&'static str, String) {
    if !Path::new("/dev/kvm").exists() {
        return ("qemu", "no /dev/kvm".into());
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_whitespace())
        .any(|f| f == "vmx" || f == "svm");
    let module = ["kvm_intel", "kvm_amd"]
        .into_iter()
        .find(|m| Path::new("/sys/module").join(m).exists());
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    match (hw, module) {
        (true, Some(m)) => ("kvm", format!("/dev/kvm with vmx/svm and {m}")),
        _ => (
            "qemu",
            format!(
                "/dev/kvm present but {}{}: stock kernels cannot run under it, using TCG",
                if hw {
                    "no kvm_intel/kvm_amd"
                } else {
                    "no vmx/svm in the CPU flags"
                },
                if pvm { ", kvm_pvm loaded" } else { "" }
            ),
        ),
    }
}

/// The values a twin's domain XML is made of; `render` is the one way to fill the template.
pub struct Domain<'a> {
    pub name: &'a str,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub domain_type: &'a str,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub cmdline: &'a str,
    pub disk: &'a Path,
    pub base: &'a Path,
    pub console_log: &'a Path,
}

impl Domain<'_> {
    pub fn render(&self) -> Result<String> {
        let path = |p: &Path| p.to_str().map(str::to_owned).context("path is not UTF-8");
        let values = [
            ("name", self.name.to_owned()),
            ("memory_mib", self.memory_mib.to_string()),
            ("vcpus", self.vcpus.to_string()),
            ("domain_type", self.domain_type.to_owned()),
            ("kernel", path(self.kernel)?),
            ("initrd", path(self.initrd)?),
            ("cmdline", self.cmdline.to_owned()),
            ("disk", path(self.disk)?),
            ("base", path(self.base)?),
            ("console_log", path(self.console_log)?),
        ];
        let mut xml = DOMAIN_TEMPLATE.to_owned();
        for (key, value) in values {
            xml = xml.replace(&format!("{{{key}}}"), &xml_escape(&value));
        }
        if let Some(i) = xml.find('{') {
            let rest: String = xml[i..].chars().take(30).collect();
            bail!("domain template has an unknown placeholder at `{rest}`");
        }
        Ok(xml)
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// `check-twin`: set up, build (or reuse) the image, boot a twin on a qcow2 overlay, time the
/// first guest-ping, write, read and execute through the agent, then remove everything.
pub fn check(domain_type: Option<&str>) -> Result<()> {
    setup()?;
    let image = image::build(Path::new(image::DEFAULT_OUT), false)?;
    eprintln!("    image {}", image.dir.display());
    let (detected, why) = detect_domain_type();
    let domain_type = domain_type.unwrap_or(detected);
    if !matches!(domain_type, "kvm" | "qemu") {
        bail!("--domain-type must be kvm or qemu, not {domain_type}");
    }
    eprintln!("    domain type {domain_type} (detected {detected}: {why})");

    let name = format!("safetytwin-check-{}", std::process::id());
    let work = PathBuf::from("/var/lib/safetytwin/check").join(&name);
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let mut twin = Twin {
        name: name.clone(),
        work: work.clone(),
        defined: false,
    };
    let overlay = work.join("overlay.qcow2");
    let console_log = work.join("console.log");
    step("qemu-img create overlay", || {
        run_cmd(Command::new("qemu-img").args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            image.rootfs.to_str().context("path is not UTF-8")?,
            overlay.to_str().context("path is not UTF-8")?,
        ]))
    })?;
    let xml = Domain {
        name: &name,
        memory_mib: 1024,
        vcpus: 2,
        domain_type,
        kernel: &image.kernel,
        initrd: &image.initrd,
        cmdline: &image.cmdline,
        disk: &overlay,
        base: &image.rootfs,
        console_log: &console_log,
    }
    .render()?;
    let xml_path = work.join("domain.xml");
    std::fs::write(&xml_path, &xml)?;
    eprintln!("    domain XML: {}", xml_path.display());

    let result = exercise(&mut twin, &xml_path);
    if result.is_err() {
        let log = std::fs::read_to_string(&console_log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!("    last console lines ({}):", console_log.display());
        for line in tail.into_iter().rev() {
            eprintln!("    | {line}");
        }
    }
    drop(twin);
    result?;
    // Every twin shares the base: a check that left it changed (or chowned to the qemu user,
    // which could then make it writable) has failed.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&image.rootfs)?;
    if meta.uid() != 0 || meta.mode() & 0o222 != 0 {
        bail!(
            "the base image {} is now uid {} mode {:o}; it must stay root's and read-only",
            image.rootfs.display(),
            meta.uid(),
            meta.mode() & 0o7777
        );
    }
    eprintln!("    base image unchanged: root-owned, mode 0444");
    Ok(())
}

/// The throw-away domain; dropping it destroys and undefines it and removes its files, also
/// when the check fails half-way.
struct Twin {
    name: String,
    work: PathBuf,
    defined: bool,
}

impl Drop for Twin {
    fn drop(&mut self) {
        if self.defined {
            eprintln!("    virsh destroy + undefine {}", self.name);
            let _ = virsh(&["destroy", &self.name]);
            let _ = virsh(&["undefine", &self.name]);
        }
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

fn exercise(twin: &mut Twin, xml_path: &Path) -> Result<()> {
    let name = twin.name.clone();
    virsh(&["define", xml_path.to_str().context("path is not UTF-8")?])?;
    twin.defined = true;
    let start = Instant::now();
    virsh(&["start", &name])?;
    eprintln!(
        "    virsh start {name}: {:.2} s",
        start.elapsed().as_secs_f64()
    );

    // The agent answers only once the guest's udev has seen the virtio port and started
    // qemu-guest-agent, so the first successful ping is the "usable" point.
    let deadline = start + Duration::from_secs(300);
    let mut last_report = Instant::now();
    loop {
        if agent(&name, r#"{"execute":"guest-ping"}"#).is_ok() {
            break;
        }
        if Instant::now() > deadline {
            bail!("no guest-ping answer within 300 s");
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "    … waiting for the guest agent ({:.0} s)",
                start.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let boot = start.elapsed();
    eprintln!(
        "    first guest-ping answered {:.1} s after virsh start",
        boot.as_secs_f64()
    );

    let (_, ping) = timed(|| agent(&name, r#"{"execute":"guest-ping"}"#))?;
    let (_, version) = timed(|| virsh(&["version"]))?;
    eprintln!(
        "    guest-ping round trip {:.0} ms (a bare `virsh version` costs {:.0} ms of that)",
        ms(ping),
        ms(version)
    );

    let (state, t) = wait_running(&name, start)?;
    eprintln!(
        "    systemctl is-system-running: {state} ({:.1} s after start)",
        t.as_secs_f64()
    );
    if state != "running" {
        let (_, failed) = exec(&name, "/bin/systemctl", &["--failed", "--no-legend"])?;
        eprintln!("    failed units:\n{failed}");
    }

    // A config write as the replayer will do it: open, write, close, then read back two ways.
    let path = "/etc/safetytwin-check.conf";
    let content = format!("written by cargo xtask check-twin {}\n", std::process::id());
    let started = Instant::now();
    let open = agent(
        &name,
        &format!(r#"{{"execute":"guest-file-open","arguments":{{"path":"{path}","mode":"w"}}}}"#),
    )?;
    let handle = json_number(&open, "return").context("guest-file-open returned no handle")?;
    agent(
        &name,
        &format!(
            r#"{{"execute":"guest-file-write","arguments":{{"handle":{handle},"buf-b64":"{}"}}}}"#,
            base64_encode(content.as_bytes())
        ),
    )?;
    agent(
        &name,
        &format!(r#"{{"execute":"guest-file-close","arguments":{{"handle":{handle}}}}}"#),
    )?;
    let write = started.elapsed();
    eprintln!(
        "    guest-file-open/write/close {path}: {:.0} ms for the three calls",
        ms(write)
    );

    let started = Instant::now();
    let open = agent(
        &name,
        &format!(r#"{{"execute":"guest-file-open","arguments":{{"path":"{path}","mode":"r"}}}}"#),
    )?;
    let handle = json_number(&open, "return").context("guest-file-open returned no handle")?;
    let read = agent(
        &name,
        &format!(
            r#"{{"execute":"guest-file-read","arguments":{{"handle":{handle},"count":4096}}}}"#
        ),
    )?;
    agent(
        &name,
        &format!(r#"{{"execute":"guest-file-close","arguments":{{"handle":{handle}}}}}"#),
    )?;
    let read_back = json_string(&read, "buf-b64")
        .and_then(|b| base64_decode(&b))
        .context("guest-file-read returned no buf-b64")?;
    let read_time = started.elapsed();
    if read_back != content.as_bytes() {
        bail!(
            "read back {:?}, wrote {content:?}",
            String::from_utf8_lossy(&read_back)
        );
    }
    eprintln!(
        "    guest-file-open/read/close: {:.0} ms, content matches",
        ms(read_time)
    );

    let ((code, cat), t) = timed(|| exec(&name, "/bin/cat", &[path]))?;
    if code != 0 || cat.as_bytes() != content.as_bytes() {
        bail!("guest-exec cat {path}: exit {code}, output {cat:?}");
    }
    eprintln!(
        "    guest-exec cat {path}: {:.0} ms (exec + status polls), content matches",
        ms(t)
    );
    let ((code, _), t) = timed(|| exec(&name, "/bin/systemctl", &["daemon-reload"]))?;
    if code != 0 {
        bail!("systemctl daemon-reload exited {code}");
    }
    eprintln!("    guest-exec systemctl daemon-reload: {:.0} ms", ms(t));
    let ((_, out), t) = timed(|| exec(&name, "/bin/systemctl", &["is-system-running"]))?;
    eprintln!(
        "    guest-exec systemctl is-system-running: {} ({:.0} ms)",
        out.trim(),
        ms(t)
    );
    let ((code, _), _) = timed(|| exec(&name, "/bin/rm", &["-f", path]))?;
    if code != 0 {
        bail!("rm {path} exited {code}");
    }
    eprintln!("    check-twin: OK");
    Ok(())
}

/// Polls `systemctl is-system-running` until the boot finished (running or degraded).
fn wait_running(name: &str, since: Instant) -> Result<(String, Duration)> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (_, out) = exec(name, "/bin/systemctl", &["is-system-running"])?;
        let state = out.trim().to_owned();
        if state != "starting" && state != "initializing" {
            return Ok((state, since.elapsed()));
        }
        if Instant::now() > deadline {
            bail!("guest still `{state}` after 180 s");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Runs a program in the guest through guest-exec and waits for it; returns its exit code
/// and standard output.
fn exec(name: &str, path: &str, args: &[&str]) -> Result<(i64, String)> {
    let args: Vec<String> = args.iter().map(|a| format!("\"{a}\"")).collect();
    let reply = agent(
        name,
        &format!(
            r#"{{"execute":"guest-exec","arguments":{{"path":"{path}","arg":[{}],"capture-output":true}}}}"#,
            args.join(",")
        ),
    )?;
    let pid = json_number(&reply, "pid").context("guest-exec returned no pid")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = agent(
            name,
            &format!(r#"{{"execute":"guest-exec-status","arguments":{{"pid":{pid}}}}}"#),
        )?;
        if status.contains("\"exited\":true") {
            let code = json_number(&status, "exitcode").unwrap_or(-1);
            let out = json_string(&status, "out-data")
                .and_then(|b| base64_decode(&b))
                .unwrap_or_default();
            return Ok((code, String::from_utf8_lossy(&out).into_owned()));
        }
        if Instant::now() > deadline {
            bail!("{path} still running in the guest after 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn agent(name: &str, json: &str) -> Result<String> {
    virsh(&["qemu-agent-command", "--timeout", "10", name, json])
}

fn virsh(args: &[&str]) -> Result<String> {
    let out = Command::new("virsh")
        .args(["-c", LIBVIRT_URI])
        .args(args)
        .output()
        .context("cannot run virsh")?;
    if !out.status.success() {
        bail!(
            "virsh {} failed: {}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, Duration)> {
    let start = Instant::now();
    let value = f()?;
    Ok((value, start.elapsed()))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The integer after `"key":` in an agent reply (replies are small, flat and machine-written,
/// which is why this needs no JSON parser).
fn json_number(json: &str, key: &str) -> Option<i64> {
    let rest = &json[json.find(&format!("\"{key}\":"))? + key.len() + 3..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '-'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The string after `"key":` in an agent reply (base64 needs no unescaping).
fn json_string(json: &str, key: &str) -> Option<String> {
    let rest = &json[json.find(&format!("\"{key}\":\""))? + key.len() + 4..];
    Some(rest[..rest.find('"')?].to_owned())
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|&c| c != b'=') {
        acc = acc << 6 | B64.iter().position(|&b| b == c)? as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for s in ["", "a", "ab", "abc", "abcd", "written by check\n"] {
            let e = base64_encode(s.as_bytes());
            assert_eq!(base64_decode(&e).unwrap(), s.as_bytes(), "{e}");
        }
        assert_eq!(base64_encode(b"abcd"), "YWJjZA==");
    }

    #[test]
    fn agent_replies_are_read() {
        let r = r#"{"return":{"exitcode":0,"out-data":"cnVubmluZwo=","exited":true}}"#;
        assert_eq!(json_number(r, "exitcode"), Some(0));
        assert_eq!(json_string(r, "out-data").as_deref(), Some("cnVubmluZwo="));
        assert_eq!(json_number(r#"{"return":1000}"#, "return"), Some(1000));
    }

    #[test]
    fn the_template_renders_without_leftovers() {
        let xml = Domain {
            name: "t&1",
            memory_mib: 512,
            vcpus: 2,
            domain_type: "qemu",
            kernel: Path::new("/k"),
            initrd: Path::new("/i"),
            cmdline: "root=/dev/vda",
            disk: Path::new("/d.qcow2"),
            base: Path::new("/b.qcow2"),
            console_log: Path::new("/c.log"),
        }
        .render()
        .unwrap();
        assert!(xml.contains("<name>t&amp;1</name>"));
        assert!(xml.contains("<domain type='qemu'>"));
    }
}
