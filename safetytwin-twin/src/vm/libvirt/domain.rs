//! A twin's domain from definition to removal: define (on a fresh overlay), start, resume or
//! restart whatever state it is found in, internal snapshots (take, revert, delete, list) and
//! undefine. Only libvirt calls here; what the domain is made of lives in `xml.rs`, how the
//! guest is talked to in `agent.rs`.

use std::time::Instant;

use virt::{
    domain::{Domain, DomainState as VirtState},
    domain_snapshot::DomainSnapshot,
    error::ErrorNumber,
    sys,
};

use super::{
    LibvirtBackend, SnapshotInfo, Twin, VmError, domain_name,
    image::{create_overlay, remove_if_exists},
    is, libvirt_err, virt_state, xml,
};

impl LibvirtBackend {
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

    /// Makes the overlay and defines the domain; returns it defined and shut off.
    pub(super) fn define(&self, name: &str) -> Result<Domain, VmError> {
        std::fs::create_dir_all(&self.config.state_dir)?;
        let overlay = self.overlay(name);
        let started = Instant::now();
        create_overlay(&self.image.rootfs, &overlay)?;
        let xml = xml::DomainSpec {
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
            user_network: self.config.user_network,
        }
        .render();
        let dom = xml
            .and_then(|xml| {
                self.conn()?
                    .define_domain_xml(&xml)
                    .map_err(|e| libvirt_err("define", name, &e))
            })
            .inspect_err(|_| {
                // Keep the state dir to twins that exist.
                let _ = std::fs::remove_file(&overlay);
            })?;
        tracing::info!(
            domain = %name,
            took_ms = started.elapsed().as_millis() as u64,
            "twin defined (overlay on {})",
            self.image.rootfs.display()
        );
        Ok(dom)
    }

    /// Gets a found or just defined domain running, whatever state it is in.
    pub(super) fn start(&self, dom: &Domain, name: &str, adopted: bool) -> Result<(), VmError> {
        let state = virt_state(dom, name)?;
        match state {
            VirtState::Running | VirtState::Blocked | VirtState::NoState => {}
            VirtState::Paused => {
                tracing::info!(domain = %name, "twin paused, resuming");
                dom.resume().map_err(|e| libvirt_err("resume", name, &e))?;
            }
            VirtState::Shutoff | VirtState::Crashed => {
                tracing::info!(domain = %name, adopted, domain_type = %self.domain_type, "twin booting");
                dom.create().map_err(|e| libvirt_err("start", name, &e))?;
            }
            // Half-way down or suspended to RAM: neither answers the agent; start over.
            VirtState::Shutdown | VirtState::PMSuspended => {
                tracing::info!(domain = %name, ?state, "twin not usable, restarting");
                dom.destroy()
                    .map_err(|e| libvirt_err("destroy", name, &e))?;
                dom.create().map_err(|e| libvirt_err("start", name, &e))?;
            }
        }
        Ok(())
    }
}

impl Twin {
    /// Takes the internal snapshot `name` (disk and memory).
    pub(super) fn create_snapshot(&self, name: &str) -> Result<(), VmError> {
        let xml = xml::snapshot(name)?;
        let started = Instant::now();
        self.dom
            .create_snapshot_xml(&xml, 0)
            .map_err(|e| libvirt_err(&format!("snapshot {name} of"), &self.name, &e))?;
        tracing::info!(
            domain = %self.name, snapshot = name,
            took_ms = started.elapsed().as_millis() as u64, "snapshot taken"
        );
        Ok(())
    }

    /// Reverts to `name`, leaving the domain running; the guest still has to answer.
    pub(super) fn revert_to(&self, name: &str) -> Result<(), VmError> {
        self.snapshot(name)?
            .revert(sys::VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING)
            .map_err(|e| libvirt_err(&format!("revert to {name}"), &self.name, &e))?;
        Ok(())
    }

    pub(super) fn delete_snapshot(&self, name: &str) -> Result<(), VmError> {
        self.snapshot(name)?
            .delete(0)
            .map_err(|e| libvirt_err(&format!("delete snapshot {name} of"), &self.name, &e))
    }

    /// The domain's snapshots, oldest first.
    pub(super) fn snapshots(&self) -> Result<Vec<SnapshotInfo>, VmError> {
        // Creation times have whole seconds; topological order (parents first) breaks ties.
        let mut list = self
            .dom
            .list_all_snapshots(sys::VIR_DOMAIN_SNAPSHOT_LIST_TOPOLOGICAL)
            .map_err(|e| libvirt_err("list snapshots of", &self.name, &e))?
            .into_iter()
            .map(|snap| {
                let name = snap
                    .name()
                    .map_err(|e| libvirt_err("snapshot name of", &self.name, &e))?;
                let xml = snap
                    .xml_desc(0)
                    .map_err(|e| libvirt_err(&format!("snapshot {name} of"), &self.name, &e))?;
                let created_unix = xml::creation_time(&xml).ok_or_else(|| {
                    VmError::Libvirt(format!("snapshot {name} of {}: no creationTime", self.name))
                })?;
                Ok(SnapshotInfo { name, created_unix })
            })
            .collect::<Result<Vec<_>, VmError>>()?;
        list.sort_by_key(|s| s.created_unix);
        Ok(list)
    }

    fn snapshot(&self, name: &str) -> Result<DomainSnapshot, VmError> {
        Domain::lookup_snapshot_by_name(&self.dom, name, 0).map_err(|e| {
            if is(&e, ErrorNumber::NoDomainSnapshot) {
                VmError::NoSuchSnapshot(name.to_owned())
            } else {
                libvirt_err(&format!("snapshot {name} of"), &self.name, &e)
            }
        })
    }
}
