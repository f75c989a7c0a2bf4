//! The twin backend on libvirt: one QEMU domain per host (`domain.xml`), booted straight from
//! the image's kernel on its own qcow2 overlay, driven only through the QEMU guest agent, with
//! internal snapshots (disk and memory, inside the overlay) as the restore points.
//!
//! The image directory is resolved once, at [`LibvirtBackend::open`]: `latest` is a symlink a
//! later `cargo xtask build-image` moves, and a twin's overlay must keep the base it was made
//! on. Adopted twins keep whatever their domain XML says.

use std::{
    fs, io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, Once, PoisonError},
    thread,
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use serde_json::{Value, json};
use virt::{
    connect::Connect,
    domain::{Domain, DomainState as VirtState},
    error::{Error as VirtError, ErrorNumber},
    sys,
};

use super::{DomainState, Ensured, ExecOutput, SnapshotInfo, TwinBackend, VmError, domain_name};

const TEMPLATE: &str = include_str!("domain.xml");

/// Under TCG the agent first answers 25–45 s after start; the margin is for a loaded host.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const BOOT_POLL: Duration = Duration::from_millis(500);
/// guest-exec has no "wait": status is polled, and this is the latency floor of every exec.
const EXEC_POLL: Duration = Duration::from_millis(20);
/// One agent call. Generous because a 1 MiB write under TCG on a busy host is slow, and an
/// expired call leaves the agent channel to be resynchronised by libvirt.
const AGENT_TIMEOUT_S: i32 = 60;
/// A ping while waiting for the guest: short, so a wedged agent costs one poll, not a minute.
const PING_TIMEOUT_S: i32 = 2;
/// Raw bytes per guest-file-write. Measured here (libvirt 11.3, bookworm's agent 7.2, TCG):
/// 128 KiB goes through in 0.1 s, 192 KiB (262 KB of base64) never comes back and keeps the
/// agent busy for a minute. The edge is near the host's default socket buffer (208 KiB), the
/// likely cause, so a request stays well below it.
const WRITE_CHUNK: usize = 64 << 10;
/// Raw bytes per guest-file-read.
const READ_CHUNK: usize = 1 << 20;

/// Where and how twins are made.
#[derive(Debug, Clone)]
pub struct LibvirtConfig {
    /// libvirt connection URI.
    pub uri: String,
    /// The image directory (or a symlink to one, such as `latest`).
    pub image: PathBuf,
    /// Twins' overlays (`<domain>.qcow2`) and console logs (`<domain>.log`).
    pub state_dir: PathBuf,
    /// Guest memory of a new twin.
    pub memory_mib: u32,
    /// Guest CPUs of a new twin.
    pub vcpus: u32,
    /// `kvm` or `qemu` (TCG); `None` detects what this host can run.
    pub domain_type: Option<String>,
}

impl Default for LibvirtConfig {
    fn default() -> Self {
        LibvirtConfig {
            uri: "qemu:///system".into(),
            image: "/var/cache/safetytwin/image/latest".into(),
            state_dir: "/var/lib/safetytwin/twins".into(),
            memory_mib: 1024,
            vcpus: 2,
            domain_type: None,
        }
    }
}

/// The twins of one replayer on one libvirt.
pub struct LibvirtBackend {
    config: LibvirtConfig,
    image: Image,
    domain_type: String,
    /// libvirt connections are thread-safe; the lock only guards replacing a dead one.
    conn: Mutex<Connect>,
    /// Held from "is it defined?" to "defined", so two first contacts make one overlay.
    defining: Mutex<()>,
}

impl std::fmt::Debug for LibvirtBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibvirtBackend")
            .field("uri", &self.config.uri)
            .field("image", &self.image.dir)
            .field("domain_type", &self.domain_type)
            .finish_non_exhaustive()
    }
}

impl LibvirtBackend {
    /// Connects to libvirt and resolves the image; nothing is created until [`ensure`].
    ///
    /// [`ensure`]: TwinBackend::ensure
    pub fn open(config: LibvirtConfig) -> Result<Self, VmError> {
        static QUIET: Once = Once::new();
        // libvirt's default error handler prints every error to stderr, also the expected
        // ones (no such domain, agent not connected yet); errors reach us as values anyway.
        QUIET.call_once(virt::error::clear_error_callback);
        let image = Image::open(&config.image)?;
        let domain_type = match &config.domain_type {
            Some(t) if t == "kvm" || t == "qemu" => t.clone(),
            Some(t) => {
                return Err(VmError::Libvirt(format!(
                    "domain type must be kvm or qemu, not {t:?}"
                )));
            }
            None => {
                let (t, why) = detect_domain_type();
                if t == "qemu" {
                    tracing::warn!("twins run under TCG (slow, no KVM): {why}");
                } else {
                    tracing::info!("twins run under KVM: {why}");
                }
                t.to_owned()
            }
        };
        let conn = connect(&config.uri)?;
        tracing::info!(
            uri = %config.uri, image = %image.dir.display(), domain_type,
            "libvirt twin backend ready"
        );
        Ok(LibvirtBackend {
            config,
            image,
            domain_type,
            conn: Mutex::new(conn),
            defining: Mutex::new(()),
        })
    }

    /// The resolved image directory new twins are made from.
    pub fn image_dir(&self) -> &Path {
        &self.image.dir
    }

    /// `kvm` or `qemu`: what new twins are defined as.
    pub fn domain_type(&self) -> &str {
        &self.domain_type
    }

    /// Removes the host's twin entirely: stops it, undefines it with its snapshots (their data
    /// lives in the overlay) and deletes the overlay and console log. Absent twins are fine.
    pub fn remove(&self, host: &str) -> Result<(), VmError> {
        let name = domain_name(host);
        if let Some(dom) = self.lookup(&name)? {
            if dom
                .is_active()
                .map_err(|e| libvirt_err("is-active", &name, &e))?
            {
                dom.destroy()
                    .map_err(|e| libvirt_err("destroy", &name, &e))?;
            }
            dom.undefine_flags(
                sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                    | sys::VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                    | sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE,
            )
            .map_err(|e| libvirt_err("undefine", &name, &e))?;
            tracing::info!(domain = %name, "twin removed");
        }
        for path in [self.overlay(&name), self.console_log(&name)] {
            remove_if_exists(&path)?;
        }
        Ok(())
    }

    fn conn(&self) -> Result<Connect, VmError> {
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        // A libvirtd restart kills the connection for good; every later call would fail.
        if !conn.is_alive().unwrap_or(false) {
            tracing::warn!(uri = %self.config.uri, "libvirt connection lost, reconnecting");
            *conn = connect(&self.config.uri)?;
        }
        Ok(conn.clone())
    }

    fn lookup(&self, name: &str) -> Result<Option<Domain>, VmError> {
        match self.conn()?.lookup_domain_by_name(name) {
            Ok(dom) => Ok(Some(dom)),
            Err(e) if is(&e, ErrorNumber::NoDomain) => Ok(None),
            Err(e) => Err(libvirt_err("lookup", name, &e)),
        }
    }

    /// The host's twin, which must exist.
    fn twin(&self, host: &str) -> Result<Twin, VmError> {
        let name = domain_name(host);
        match self.lookup(&name)? {
            Some(dom) => Ok(Twin { dom, name }),
            None => Err(VmError::Libvirt(format!(
                "{name}: no such domain (not ensured)"
            ))),
        }
    }

    fn overlay(&self, name: &str) -> PathBuf {
        self.config.state_dir.join(format!("{name}.qcow2"))
    }

    fn console_log(&self, name: &str) -> PathBuf {
        self.config.state_dir.join(format!("{name}.log"))
    }

    /// Makes the overlay and defines the domain; returns it defined and shut off.
    fn define(&self, name: &str) -> Result<Domain, VmError> {
        fs::create_dir_all(&self.config.state_dir)?;
        let overlay = self.overlay(name);
        if overlay.exists() {
            // Left by a twin removed half-way or a crash before define: its content belongs
            // to no domain, and the store replays the host's state into the fresh one.
            tracing::info!(path = %overlay.display(), "replacing a stale overlay");
            fs::remove_file(&overlay)?;
        }
        let started = Instant::now();
        let out = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&self.image.rootfs)
            .arg(&overlay)
            .output()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run qemu-img: {e}")))?;
        if !out.status.success() {
            return Err(VmError::Image(format!(
                "qemu-img create {}: {}",
                overlay.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let xml = DomainSpec {
            name,
            memory_mib: self.config.memory_mib,
            vcpus: self.config.vcpus,
            domain_type: &self.domain_type,
            kernel: &self.image.kernel,
            initrd: &self.image.initrd,
            cmdline: &self.image.cmdline,
            disk: &overlay,
            base: &self.image.rootfs,
            console_log: &self.console_log(name),
        }
        .render()?;
        let dom = self.conn()?.define_domain_xml(&xml).map_err(|e| {
            // Keep the state dir to twins that exist.
            let _ = fs::remove_file(&overlay);
            libvirt_err("define", name, &e)
        })?;
        tracing::info!(
            domain = %name,
            took_ms = started.elapsed().as_millis() as u64,
            "twin defined (overlay on {})",
            self.image.rootfs.display()
        );
        Ok(dom)
    }

    /// Waits for the first answer of the guest agent; fails early when the domain stops.
    fn wait_for_agent(&self, twin: &Twin, timeout: Duration) -> Result<Duration, VmError> {
        let started = Instant::now();
        loop {
            let last_error = match twin.agent("guest-ping", json!({}), PING_TIMEOUT_S) {
                Ok(_) => return Ok(started.elapsed()),
                Err(e) => e,
            };
            let active = twin.dom.is_active().unwrap_or(true);
            if !active || started.elapsed() > timeout {
                let log = self.console_log(&twin.name);
                log_console_tail(&log);
                let why = if active {
                    format!("no answer within {} s", timeout.as_secs())
                } else {
                    "the domain stopped".to_owned()
                };
                return Err(VmError::Agent(format!(
                    "{}: {why} (last: {last_error}); console log {}",
                    twin.name,
                    log.display()
                )));
            }
            thread::sleep(BOOT_POLL);
        }
    }
}

impl TwinBackend for LibvirtBackend {
    fn ensure(&self, host: &str) -> Result<Ensured, VmError> {
        let started = Instant::now();
        let name = domain_name(host);
        let (dom, adopted) = {
            let _defining = self.defining.lock().unwrap_or_else(PoisonError::into_inner);
            match self.lookup(&name)? {
                Some(dom) => (dom, true),
                None => (self.define(&name)?, false),
            }
        };
        let state = virt_state(&dom, &name)?;
        match state {
            VirtState::Running | VirtState::Blocked | VirtState::NoState => {}
            VirtState::Paused => {
                tracing::info!(domain = %name, "twin paused, resuming");
                dom.resume().map_err(|e| libvirt_err("resume", &name, &e))?;
            }
            VirtState::Shutoff | VirtState::Crashed => {
                tracing::info!(domain = %name, adopted, domain_type = %self.domain_type, "twin booting");
                dom.create().map_err(|e| libvirt_err("start", &name, &e))?;
            }
            // Half-way down or suspended to RAM: neither answers the agent; start over.
            VirtState::Shutdown | VirtState::PMSuspended => {
                tracing::info!(domain = %name, ?state, "twin not usable, restarting");
                dom.destroy()
                    .map_err(|e| libvirt_err("destroy", &name, &e))?;
                dom.create().map_err(|e| libvirt_err("start", &name, &e))?;
            }
        }
        let twin = Twin { dom, name };
        self.wait_for_agent(&twin, BOOT_TIMEOUT)?;
        let took = started.elapsed();
        tracing::info!(
            domain = %twin.name, adopted,
            "twin ready after {:.1} s", took.as_secs_f64()
        );
        Ok(Ensured { adopted, took })
    }

    fn state(&self, host: &str) -> Result<DomainState, VmError> {
        let name = domain_name(host);
        let Some(dom) = self.lookup(&name)? else {
            return Ok(DomainState::Absent);
        };
        Ok(match virt_state(&dom, &name)? {
            VirtState::Running | VirtState::Blocked => DomainState::Running,
            VirtState::Paused => DomainState::Paused,
            VirtState::Shutoff => DomainState::ShutOff,
            VirtState::NoState
            | VirtState::Shutdown
            | VirtState::Crashed
            | VirtState::PMSuspended => DomainState::Other,
        })
    }

    fn write_file(&self, host: &str, path: &str, bytes: &[u8]) -> Result<(), VmError> {
        let twin = self.twin(host)?;
        twin.with_file(path, "w", |handle| {
            for chunk in bytes.chunks(WRITE_CHUNK) {
                let mut rest = chunk;
                while !rest.is_empty() {
                    let reply = twin.agent(
                        "guest-file-write",
                        json!({ "handle": handle, "buf-b64": BASE64.encode(rest) }),
                        AGENT_TIMEOUT_S,
                    )?;
                    let count = reply["count"].as_u64().unwrap_or(0) as usize;
                    if count == 0 || count > rest.len() {
                        return Err(VmError::Agent(format!(
                            "guest-file-write {path} on {}: wrote {count} of {} bytes",
                            twin.name,
                            rest.len()
                        )));
                    }
                    rest = &rest[count..];
                }
            }
            Ok(())
        })
    }

    fn read_file(&self, host: &str, path: &str) -> Result<Vec<u8>, VmError> {
        let twin = self.twin(host)?;
        twin.with_file(path, "r", |handle| {
            let mut content = Vec::new();
            loop {
                let reply = twin.agent(
                    "guest-file-read",
                    json!({ "handle": handle, "count": READ_CHUNK }),
                    AGENT_TIMEOUT_S,
                )?;
                content.extend(decode(&reply["buf-b64"], "guest-file-read", &twin.name)?);
                if reply["eof"].as_bool().unwrap_or(true) {
                    return Ok(content);
                }
            }
        })
    }

    fn exec(&self, host: &str, argv: &[String], timeout: Duration) -> Result<ExecOutput, VmError> {
        let mut outputs = self.exec_all(host, std::slice::from_ref(&argv.to_vec()), timeout)?;
        Ok(outputs.remove(0))
    }

    fn exec_all(
        &self,
        host: &str,
        argvs: &[Vec<String>],
        timeout: Duration,
    ) -> Result<Vec<ExecOutput>, VmError> {
        let twin = self.twin(host)?;
        let deadline = Instant::now() + timeout;
        // All started before any is polled: the guest runs them side by side.
        let pids = argvs
            .iter()
            .map(|argv| twin.spawn(argv))
            .collect::<Result<Vec<_>, _>>()?;
        let mut outputs: Vec<Option<ExecOutput>> = vec![None; argvs.len()];
        loop {
            for (i, pid) in pids.iter().enumerate() {
                if outputs[i].is_none() {
                    outputs[i] = twin.exec_status(*pid, &argvs[i][0])?;
                }
            }
            if outputs.iter().all(Option::is_some) {
                return Ok(outputs.into_iter().flatten().collect());
            }
            if Instant::now() > deadline {
                let running: Vec<&str> = outputs
                    .iter()
                    .zip(argvs)
                    .filter(|(o, _)| o.is_none())
                    .map(|(_, argv)| argv[0].as_str())
                    .collect();
                for (pid, _) in pids.iter().zip(&outputs).filter(|(_, o)| o.is_none()) {
                    twin.kill(*pid);
                }
                return Err(VmError::Agent(format!(
                    "{} still running in {} after {:.1} s (killed)",
                    running.join(", "),
                    twin.name,
                    timeout.as_secs_f64()
                )));
            }
            thread::sleep(EXEC_POLL);
        }
    }

    fn snapshot(&self, host: &str, name: &str) -> Result<(), VmError> {
        let twin = self.twin(host)?;
        // Stated rather than left to libvirt's default, which has changed between releases:
        // internal snapshots keep disk and memory inside the overlay, and must not be mixed
        // with external ones.
        let xml = format!(
            "<domainsnapshot><name>{}</name><memory snapshot='internal'/>\
             <disks><disk name='vda' snapshot='internal'/></disks></domainsnapshot>",
            xml_escape(name)
        );
        let started = Instant::now();
        twin.dom
            .create_snapshot_xml(&xml, 0)
            .map_err(|e| libvirt_err(&format!("snapshot {name} of"), &twin.name, &e))?;
        tracing::info!(
            domain = %twin.name, snapshot = name,
            took_ms = started.elapsed().as_millis() as u64, "snapshot taken"
        );
        Ok(())
    }

    fn revert(&self, host: &str, name: &str) -> Result<(), VmError> {
        let twin = self.twin(host)?;
        let snapshot = twin.snapshot(name)?;
        let started = Instant::now();
        snapshot
            .revert(sys::VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING)
            .map_err(|e| libvirt_err(&format!("revert to {name}"), &twin.name, &e))?;
        let reverted = started.elapsed();
        self.wait_for_agent(&twin, BOOT_TIMEOUT)?;
        // The guest's clock resumed at the snapshot's time. Without arguments the agent sets
        // it from the RTC, which QEMU keeps on host time; a guest without hwclock refuses,
        // and then its clock is just late.
        if let Err(e) = twin.agent("guest-set-time", json!({}), AGENT_TIMEOUT_S) {
            tracing::debug!(domain = %twin.name, "guest-set-time after revert: {e}");
        }
        tracing::info!(
            domain = %twin.name, snapshot = name,
            revert_ms = reverted.as_millis() as u64,
            took_ms = started.elapsed().as_millis() as u64, "twin reverted"
        );
        Ok(())
    }

    fn delete_snapshot(&self, host: &str, name: &str) -> Result<(), VmError> {
        let twin = self.twin(host)?;
        twin.snapshot(name)?
            .delete(0)
            .map_err(|e| libvirt_err(&format!("delete snapshot {name} of"), &twin.name, &e))
    }

    fn snapshots(&self, host: &str) -> Result<Vec<SnapshotInfo>, VmError> {
        let twin = self.twin(host)?;
        // Creation times have whole seconds; topological order (parents first) breaks ties.
        let mut list = twin
            .dom
            .list_all_snapshots(sys::VIR_DOMAIN_SNAPSHOT_LIST_TOPOLOGICAL)
            .map_err(|e| libvirt_err("list snapshots of", &twin.name, &e))?
            .into_iter()
            .map(|snap| {
                let name = snap
                    .name()
                    .map_err(|e| libvirt_err("snapshot name of", &twin.name, &e))?;
                let xml = snap
                    .xml_desc(0)
                    .map_err(|e| libvirt_err(&format!("snapshot {name} of"), &twin.name, &e))?;
                let created_unix = creation_time(&xml).ok_or_else(|| {
                    VmError::Libvirt(format!("snapshot {name} of {}: no creationTime", twin.name))
                })?;
                Ok(SnapshotInfo { name, created_unix })
            })
            .collect::<Result<Vec<_>, VmError>>()?;
        list.sort_by_key(|s| s.created_unix);
        Ok(list)
    }
}

/// One twin's domain, for the calls of one backend method.
struct Twin {
    dom: Domain,
    name: String,
}

impl Twin {
    /// One agent command; returns its `return` value.
    fn agent(&self, command: &str, arguments: Value, timeout_s: i32) -> Result<Value, VmError> {
        let mut request = json!({ "execute": command });
        if arguments.as_object().is_some_and(|a| !a.is_empty()) {
            request["arguments"] = arguments;
        }
        let reply = self
            .dom
            .qemu_agent_command(&request.to_string(), timeout_s, 0)
            .map_err(|e| VmError::Agent(format!("{command} on {}: {}", self.name, e.message())))?;
        let mut reply: Value = serde_json::from_str(&reply).map_err(|e| {
            VmError::Agent(format!("{command} on {}: unreadable reply: {e}", self.name))
        })?;
        Ok(reply["return"].take())
    }

    /// Opens `path`, runs `f` with the handle and closes it whatever `f` returned.
    fn with_file<T>(
        &self,
        path: &str,
        mode: &str,
        f: impl FnOnce(i64) -> Result<T, VmError>,
    ) -> Result<T, VmError> {
        let handle = self
            .agent(
                "guest-file-open",
                json!({ "path": path, "mode": mode }),
                AGENT_TIMEOUT_S,
            )
            .map_err(|e| in_path(e, path))?
            .as_i64()
            .ok_or_else(|| {
                VmError::Agent(format!(
                    "guest-file-open {path} on {}: no handle",
                    self.name
                ))
            })?;
        let result = f(handle).map_err(|e| in_path(e, path));
        let closed = self.agent(
            "guest-file-close",
            json!({ "handle": handle }),
            AGENT_TIMEOUT_S,
        );
        // The first error is the one that explains the second.
        let value = result?;
        closed.map_err(|e| in_path(e, path))?;
        Ok(value)
    }

    fn spawn(&self, argv: &[String]) -> Result<i64, VmError> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| VmError::Agent(format!("guest-exec on {}: empty argv", self.name)))?;
        let reply = self
            .agent(
                "guest-exec",
                json!({ "path": program, "arg": args, "capture-output": true }),
                AGENT_TIMEOUT_S,
            )
            .map_err(|e| in_path(e, program))?;
        reply["pid"]
            .as_i64()
            .ok_or_else(|| VmError::Agent(format!("guest-exec {program} on {}: no pid", self.name)))
    }

    /// The result of `pid` once it exited, else `None`.
    fn exec_status(&self, pid: i64, program: &str) -> Result<Option<ExecOutput>, VmError> {
        let status = self
            .agent("guest-exec-status", json!({ "pid": pid }), AGENT_TIMEOUT_S)
            .map_err(|e| in_path(e, program))?;
        if !status["exited"].as_bool().unwrap_or(false) {
            return Ok(None);
        }
        let code = match (status["exitcode"].as_i64(), status["signal"].as_i64()) {
            (_, Some(signal)) => 128 + signal,
            (Some(code), None) => code,
            (None, None) => -1,
        };
        let data = |key: &str| match &status[key] {
            Value::Null => Ok(Vec::new()),
            b64 => decode(b64, "guest-exec-status", &self.name),
        };
        Ok(Some(ExecOutput {
            code: i32::try_from(code).unwrap_or(-1),
            stdout: data("out-data")?,
            stderr: data("err-data")?,
        }))
    }

    /// Best effort: the agent cannot signal what it started, but the guest's kill can.
    fn kill(&self, pid: i64) {
        let argv = ["/bin/kill".to_owned(), "-KILL".to_owned(), pid.to_string()];
        if let Err(e) = self.spawn(&argv) {
            tracing::debug!(domain = %self.name, pid, "killing a timed-out program: {e}");
        }
    }

    fn snapshot(&self, name: &str) -> Result<virt::domain_snapshot::DomainSnapshot, VmError> {
        Domain::lookup_snapshot_by_name(&self.dom, name, 0).map_err(|e| {
            if is(&e, ErrorNumber::NoDomainSnapshot) {
                VmError::NoSuchSnapshot(name.to_owned())
            } else {
                libvirt_err(&format!("snapshot {name} of"), &self.name, &e)
            }
        })
    }
}

/// The image directory, resolved, with what a domain needs from it.
#[derive(Debug)]
struct Image {
    dir: PathBuf,
    rootfs: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    cmdline: String,
}

impl Image {
    fn open(path: &Path) -> Result<Image, VmError> {
        let missing = |what: &str| {
            VmError::Image(format!(
                "{what} (build the image with `cargo xtask build-image`)"
            ))
        };
        let dir = fs::canonicalize(path)
            .map_err(|e| missing(&format!("no image at {}: {e}", path.display())))?;
        let manifest = dir.join("image.json");
        let text = fs::read_to_string(&manifest)
            .map_err(|e| missing(&format!("cannot read {}: {e}", manifest.display())))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| VmError::Image(format!("{}: {e}", manifest.display())))?;
        let cmdline = json["cmdline"]
            .as_str()
            .ok_or_else(|| VmError::Image(format!("{}: no cmdline", manifest.display())))?
            .to_owned();
        let image = Image {
            rootfs: dir.join("rootfs.qcow2"),
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
            cmdline,
            dir,
        };
        for file in [&image.rootfs, &image.kernel, &image.initrd] {
            let meta =
                fs::metadata(file).map_err(|e| missing(&format!("{}: {e}", file.display())))?;
            // QEMU runs as its own user and opens the shared base read-only; libvirt is told
            // not to relabel it (domain.xml), so it must be readable as it is.
            if meta.permissions().mode() & 0o004 == 0 {
                return Err(VmError::Image(format!(
                    "{} is not world-readable; QEMU could not open it",
                    file.display()
                )));
            }
        }
        Ok(image)
    }
}

/// The values `domain.xml` is filled with.
#[derive(Debug)]
struct DomainSpec<'a> {
    name: &'a str,
    memory_mib: u32,
    vcpus: u32,
    domain_type: &'a str,
    kernel: &'a Path,
    initrd: &'a Path,
    cmdline: &'a str,
    disk: &'a Path,
    base: &'a Path,
    console_log: &'a Path,
}

impl DomainSpec<'_> {
    fn render(&self) -> Result<String, VmError> {
        let path = |p: &Path| {
            p.to_str().map(str::to_owned).ok_or_else(|| {
                VmError::Io(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} is not UTF-8", p.display()),
                ))
            })
        };
        fill(
            TEMPLATE,
            &[
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
            ],
        )
    }
}

/// Replaces each `{key}` of `template` by its XML-escaped value in one pass, so a value that
/// contains braces is never taken for a placeholder; an unknown key is an error.
fn fill(template: &str, values: &[(&str, String)]) -> Result<String, VmError> {
    let mut out = String::with_capacity(template.len() + 512);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let key = after.find('}').map(|close| &after[..close]);
        let value = key.and_then(|key| values.iter().find(|(k, _)| *k == key));
        let (Some(key), Some((_, value))) = (key, value) else {
            let near: String = rest[open..].chars().take(30).collect();
            return Err(VmError::Libvirt(format!(
                "domain template: unknown placeholder at `{near}`"
            )));
        };
        out.push_str(&xml_escape(value));
        rest = &after[key.len() + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// What this host runs twins as, and why: `kvm` only with hardware virtualisation (vmx/svm)
/// and kvm_intel or kvm_amd loaded. A host that is itself a VM may offer /dev/kvm through a
/// para-virtualised KVM (kvm_pvm) that runs only guests built for it, so /dev/kvm alone proves
/// nothing.
fn detect_domain_type() -> (&'static str, String) {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    choose_domain_type(Path::new("/dev/kvm").exists(), &cpuinfo, |module| {
        Path::new("/sys/module").join(module).exists()
    })
}

fn choose_domain_type(
    dev_kvm: bool,
    cpuinfo: &str,
    loaded: impl Fn(&str) -> bool,
) -> (&'static str, String) {
    if !dev_kvm {
        return ("qemu", "no /dev/kvm".into());
    }
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_whitespace())
        .any(|f| f == "vmx" || f == "svm");
    let module = ["kvm_intel", "kvm_amd"].into_iter().find(|m| loaded(m));
    match (hw, module) {
        (true, Some(m)) => ("kvm", format!("/dev/kvm with vmx/svm and {m}")),
        _ => (
            "qemu",
            format!(
                "/dev/kvm present but {}{}: stock kernels cannot run under it",
                if hw {
                    "no kvm_intel/kvm_amd"
                } else {
                    "no vmx/svm in the CPU flags"
                },
                if loaded("kvm_pvm") {
                    ", kvm_pvm loaded"
                } else {
                    ""
                }
            ),
        ),
    }
}

/// `<creationTime>` of a snapshot's XML.
fn creation_time(xml: &str) -> Option<i64> {
    let start = xml.find("<creationTime>")? + "<creationTime>".len();
    let len = xml[start..].find('<')?;
    xml[start..start + len].trim().parse().ok()
}

fn connect(uri: &str) -> Result<Connect, VmError> {
    Connect::open(Some(uri))
        .map_err(|e| VmError::Libvirt(format!("connect {uri}: {}", e.message())))
}

fn virt_state(dom: &Domain, name: &str) -> Result<VirtState, VmError> {
    let info = dom.info().map_err(|e| libvirt_err("state of", name, &e))?;
    Ok(info.state.unwrap_or(VirtState::NoState))
}

fn is(e: &VirtError, code: ErrorNumber) -> bool {
    e.code().is_known_and(|c| c == code)
}

fn libvirt_err(doing: &str, name: &str, e: &VirtError) -> VmError {
    VmError::Libvirt(format!("{doing} {name}: {}", e.message()))
}

/// Names the guest path in an agent error (the agent's own message often does not).
fn in_path(e: VmError, path: &str) -> VmError {
    match e {
        VmError::Agent(msg) => VmError::Agent(format!("{path}: {msg}")),
        other => other,
    }
}

fn decode(b64: &Value, command: &str, name: &str) -> Result<Vec<u8>, VmError> {
    let text = b64.as_str().unwrap_or_default();
    BASE64
        .decode(text)
        .map_err(|e| VmError::Agent(format!("{command} on {name}: bad base64: {e}")))
}

fn remove_if_exists(path: &Path) -> Result<(), VmError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

fn log_console_tail(log: &Path) {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    for line in &lines[lines.len().saturating_sub(20)..] {
        tracing::warn!("console | {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(name: &'a str, cmdline: &'a str, disk: &'a Path) -> DomainSpec<'a> {
        DomainSpec {
            name,
            memory_mib: 512,
            vcpus: 2,
            domain_type: "qemu",
            kernel: Path::new("/img/vmlinuz"),
            initrd: Path::new("/img/initrd.img"),
            cmdline,
            disk,
            base: Path::new("/img/rootfs.qcow2"),
            console_log: Path::new("/state/c.log"),
        }
    }

    #[test]
    fn the_template_renders_every_placeholder_escaped() {
        let xml = spec("t&1", "root=/dev/vda x='{disk}'", Path::new("/s/<d>.qcow2"))
            .render()
            .unwrap();
        assert!(xml.contains("<domain type='qemu'>"), "{xml}");
        assert!(xml.contains("<name>t&amp;1</name>"));
        assert!(xml.contains("<memory unit='MiB'>512</memory>"));
        // A value holding braces stays a value.
        assert!(xml.contains("<cmdline>root=/dev/vda x=&apos;{disk}&apos;</cmdline>"));
        assert!(xml.contains("<source file='/s/&lt;d&gt;.qcow2'/>"));
        assert!(xml.contains("<source file='/img/rootfs.qcow2'>"));
        assert!(xml.contains("<log file='/state/c.log' append='off'/>"));
        let without_cmdline = xml.replace("x=&apos;{disk}&apos;", "");
        assert!(
            !without_cmdline.contains('{'),
            "leftover placeholder: {xml}"
        );
    }

    #[test]
    fn unknown_placeholders_are_refused() {
        let e = fill("<a>{nope}</a>", &[("name", "x".into())]).unwrap_err();
        assert!(e.to_string().contains("{nope}"), "{e}");
        assert!(fill("<a>{unterminated", &[]).is_err());
        assert_eq!(
            fill("{a}{b}-", &[("a", "1".into()), ("b", "<".into())]).unwrap(),
            "1&lt;-"
        );
    }

    #[test]
    fn kvm_only_with_hardware_virtualisation_and_its_module() {
        let vmx = "processor\t: 0\nflags\t\t: fpu vme vmx sse\n";
        let plain = "processor\t: 0\nflags\t\t: fpu vme sse\n";
        let none = |_: &str| false;
        assert_eq!(choose_domain_type(false, vmx, |_| true).0, "qemu");
        assert_eq!(
            choose_domain_type(true, vmx, |m| m == "kvm_intel"),
            ("kvm", "/dev/kvm with vmx/svm and kvm_intel".into())
        );
        assert_eq!(choose_domain_type(true, vmx, none).0, "qemu");
        let (t, why) = choose_domain_type(true, plain, |m| m == "kvm_pvm");
        assert_eq!(t, "qemu");
        assert!(
            why.contains("no vmx/svm") && why.contains("kvm_pvm"),
            "{why}"
        );
    }

    #[test]
    fn snapshot_creation_time_is_read() {
        let xml = "<domainsnapshot>\n  <name>a</name>\n  <state>running</state>\n  \
                   <creationTime>1735689600</creationTime>\n</domainsnapshot>";
        assert_eq!(creation_time(xml), Some(1_735_689_600));
        assert_eq!(creation_time("<domainsnapshot/>"), None);
    }
}
