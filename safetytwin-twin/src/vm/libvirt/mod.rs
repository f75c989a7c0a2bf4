//! The twin backend on libvirt: one QEMU domain per host, booted straight from the image's
//! kernel on its own qcow2 overlay, driven only through the QEMU guest agent, with internal
//! snapshots (disk and memory, inside the overlay) as the restore points.
//!
//! This file is the backend itself (configuration, the connection, [`TwinBackend`] as calls
//! into the parts); each concern has its own file: `domain.rs` the domain's lifecycle and
//! snapshots, `xml.rs` the XML libvirt is given and returns, `agent.rs` the guest-agent
//! protocol, `image.rs` the image and the overlays, `host.rs` whether this host runs KVM.
//!
//! The image directory is resolved once, at [`LibvirtBackend::open`]: `latest` is a symlink a
//! later `cargo xtask build-image` moves, and a twin's overlay must keep the base it was made
//! on. Adopted twins keep whatever their domain XML says.

mod agent;
mod domain;
mod host;
mod image;
mod xml;

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, Once, PoisonError},
    time::{Duration, Instant},
};

use virt::{
    connect::Connect,
    domain::{Domain, DomainState as VirtState},
    error::{Error as VirtError, ErrorNumber},
};

use self::{host::detect_domain_type, image::Image};
use super::{DomainState, Ensured, ExecOutput, SnapshotInfo, TwinBackend, VmError, domain_name};

/// Under TCG the agent first answers 25–45 s after start; the margin is for a loaded host.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

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
    /// Give each domain a user-mode (slirp) NIC. Twins have none; a *test host* VM does, to
    /// stream to a replayer on this machine (the guest reaches this machine's loopback at
    /// 10.0.2.2).
    pub user_network: bool,
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
            user_network: false,
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
        self.start(&dom, &name, adopted)?;
        let twin = Twin { dom, name };
        twin.wait_for_agent(BOOT_TIMEOUT, &self.console_log(&twin.name))?;
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
        self.twin(host)?.write_file(path, bytes)
    }

    fn read_file(&self, host: &str, path: &str) -> Result<Vec<u8>, VmError> {
        self.twin(host)?.read_file(path)
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
        self.twin(host)?.exec_all(argvs, timeout)
    }

    fn snapshot(&self, host: &str, name: &str) -> Result<(), VmError> {
        self.twin(host)?.create_snapshot(name)
    }

    fn revert(&self, host: &str, name: &str) -> Result<(), VmError> {
        let twin = self.twin(host)?;
        let started = Instant::now();
        twin.revert_to(name)?;
        let reverted = started.elapsed();
        twin.wait_for_agent(BOOT_TIMEOUT, &self.console_log(&twin.name))?;
        twin.set_time();
        tracing::info!(
            domain = %twin.name, snapshot = name,
            revert_ms = reverted.as_millis() as u64,
            took_ms = started.elapsed().as_millis() as u64, "twin reverted"
        );
        Ok(())
    }

    fn delete_snapshot(&self, host: &str, name: &str) -> Result<(), VmError> {
        self.twin(host)?.delete_snapshot(name)
    }

    fn snapshots(&self, host: &str) -> Result<Vec<SnapshotInfo>, VmError> {
        self.twin(host)?.snapshots()
    }

    fn release(&self) -> Option<String> {
        Some(self.image.suite.clone())
    }
}

/// One twin's domain, for the calls of one backend method.
struct Twin {
    dom: Domain,
    name: String,
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
