//! The XML libvirt is given and returns: a twin's domain, a snapshot's definition, and the
//! creation time read back from a snapshot. Typed structs written and read by quick-xml's
//! serde support, so every value is escaped by the library and nothing a path, name or
//! command line holds can change the document's structure.
//!
//! The domain (what used to be a template, `domain.xml`) is stated here field by field:
//! a struct cannot leave a value unescaped, lose a placeholder, or drift from the code that
//! fills it, and its comments sit next to the elements they explain.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::VmError;

/// The values a twin's domain is made of.
#[derive(Debug)]
pub(super) struct DomainSpec<'a> {
    pub(super) name: &'a str,
    pub(super) memory_mib: u32,
    pub(super) vcpus: u32,
    /// `kvm` where KVM can run a stock kernel, else `qemu` (TCG).
    pub(super) domain_type: &'a str,
    /// kernel, initrd, cmdline: from the image's image.json (direct kernel boot: no
    /// bootloader, no firmware menus, and the kernel command line stays under the replayer's
    /// control).
    pub(super) kernel: &'a Path,
    pub(super) initrd: &'a Path,
    pub(super) cmdline: &'a str,
    /// The twin's own qcow2 overlay, whose backing file is `base`.
    pub(super) disk: &'a Path,
    /// The shared, read-only image; it must stay world-readable.
    pub(super) base: &'a Path,
    /// The serial console, kept by virtlogd, for when a twin does not come up.
    pub(super) console_log: &'a Path,
    /// A user-mode NIC (test host VMs only).
    pub(super) user_network: bool,
}

impl DomainSpec<'_> {
    /// The domain's XML.
    pub(super) fn render(&self) -> Result<String, VmError> {
        let domain = Domain {
            r#type: self.domain_type,
            name: self.name,
            memory: Memory {
                unit: "MiB",
                value: self.memory_mib,
            },
            vcpu: self.vcpus,
            os: Os {
                r#type: OsType {
                    arch: "x86_64",
                    machine: "q35",
                    value: "hvm",
                },
                kernel: utf8(self.kernel)?,
                initrd: utf8(self.initrd)?,
                cmdline: self.cmdline,
            },
            features: Features { acpi: (), apic: () },
            clock: Clock { offset: "utc" },
            on_poweroff: "destroy",
            on_reboot: "restart",
            on_crash: "destroy",
            devices: Devices {
                disk: Disk {
                    r#type: "file",
                    device: "disk",
                    driver: Driver {
                        name: "qemu",
                        r#type: "qcow2",
                        discard: "unmap",
                    },
                    source: Source {
                        file: utf8(self.disk)?,
                        seclabel: None,
                    },
                    // The chain is stated, not probed, and the shared base is never
                    // relabelled: libvirt would otherwise chown it to the qemu user for every
                    // twin and leave it so.
                    backing_store: BackingStore {
                        r#type: "file",
                        format: Format { r#type: "qcow2" },
                        source: Source {
                            file: utf8(self.base)?,
                            seclabel: Some(Seclabel {
                                model: "dac",
                                relabel: "no",
                            }),
                        },
                        backing_store: (),
                    },
                    target: Target {
                        dev: "vda",
                        bus: "virtio",
                    },
                },
                serial: Serial {
                    r#type: "pty",
                    log: Log {
                        file: utf8(self.console_log)?,
                        append: "off",
                    },
                    target: PortTarget {
                        r#type: None,
                        port: 0,
                    },
                },
                console: Console {
                    r#type: "pty",
                    target: PortTarget {
                        r#type: Some("serial"),
                        port: 0,
                    },
                },
                // The guest agent; libvirt picks the host socket. The guest starts
                // qemu-guest-agent when udev sees this port.
                channel: Channel {
                    r#type: "unix",
                    target: ChannelTarget {
                        r#type: "virtio",
                        name: AGENT_CHANNEL,
                    },
                },
                // No network (but on a test host), display, USB or balloon: the twin is
                // driven through the agent only.
                interface: self.user_network.then_some(Interface {
                    r#type: "user",
                    model: InterfaceModel { r#type: "virtio" },
                }),
                controller: Controller {
                    r#type: "usb",
                    model: "none",
                },
                video: Video {
                    model: Model { r#type: "none" },
                },
                memballoon: Model { r#type: "none" },
            },
        };
        to_xml("domain", &domain)
    }
}

/// The virtio port the guest agent listens on.
const AGENT_CHANNEL: &str = "org.qemu.guest_agent.0";

/// An internal snapshot named `name`. Stated rather than left to libvirt's default, which has
/// changed between releases: internal snapshots keep disk and memory inside the overlay, and
/// must not be mixed with external ones.
pub(super) fn snapshot(name: &str) -> Result<String, VmError> {
    to_xml(
        "domainsnapshot",
        &SnapshotDef {
            name,
            memory: SnapshotMode {
                snapshot: "internal",
            },
            disks: SnapshotDisks {
                disk: SnapshotDisk {
                    name: "vda",
                    snapshot: "internal",
                },
            },
        },
    )
}

/// `<creationTime>` of a snapshot's XML (as libvirt returns it, with much more in it).
pub(super) fn creation_time(xml: &str) -> Option<i64> {
    #[derive(Deserialize)]
    struct Snapshot {
        #[serde(rename = "creationTime")]
        creation_time: i64,
    }
    quick_xml::de::from_str::<Snapshot>(xml)
        .ok()
        .map(|s| s.creation_time)
}

fn to_xml(root: &str, value: &impl Serialize) -> Result<String, VmError> {
    quick_xml::se::to_string_with_root(root, value)
        .map_err(|e| VmError::Libvirt(format!("<{root}> XML: {e}")))
}

fn utf8(p: &Path) -> Result<&str, VmError> {
    p.to_str().ok_or_else(|| {
        VmError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not UTF-8", p.display()),
        ))
    })
}

// libvirt's domain format, as much of it as a twin uses. `@` names an attribute, `$text` an
// element's text; `()` is an empty element.

#[derive(Serialize)]
struct Domain<'a> {
    #[serde(rename = "@type")]
    r#type: &'a str,
    name: &'a str,
    memory: Memory,
    vcpu: u32,
    os: Os<'a>,
    features: Features,
    clock: Clock,
    on_poweroff: &'a str,
    on_reboot: &'a str,
    on_crash: &'a str,
    devices: Devices<'a>,
}

#[derive(Serialize)]
struct Memory {
    #[serde(rename = "@unit")]
    unit: &'static str,
    #[serde(rename = "$text")]
    value: u32,
}

#[derive(Serialize)]
struct Os<'a> {
    r#type: OsType,
    kernel: &'a str,
    initrd: &'a str,
    cmdline: &'a str,
}

#[derive(Serialize)]
struct OsType {
    #[serde(rename = "@arch")]
    arch: &'static str,
    #[serde(rename = "@machine")]
    machine: &'static str,
    #[serde(rename = "$text")]
    value: &'static str,
}

#[derive(Serialize)]
struct Features {
    acpi: (),
    apic: (),
}

#[derive(Serialize)]
struct Clock {
    #[serde(rename = "@offset")]
    offset: &'static str,
}

#[derive(Serialize)]
struct Devices<'a> {
    disk: Disk<'a>,
    serial: Serial<'a>,
    console: Console,
    channel: Channel,
    #[serde(skip_serializing_if = "Option::is_none")]
    interface: Option<Interface>,
    controller: Controller,
    video: Video,
    memballoon: Model,
}

#[derive(Serialize)]
struct Interface {
    #[serde(rename = "@type")]
    r#type: &'static str,
    model: InterfaceModel,
}

#[derive(Serialize)]
struct InterfaceModel {
    #[serde(rename = "@type")]
    r#type: &'static str,
}

#[derive(Serialize)]
struct Disk<'a> {
    #[serde(rename = "@type")]
    r#type: &'static str,
    #[serde(rename = "@device")]
    device: &'static str,
    driver: Driver,
    source: Source<'a>,
    #[serde(rename = "backingStore")]
    backing_store: BackingStore<'a>,
    target: Target,
}

#[derive(Serialize)]
struct Driver {
    #[serde(rename = "@name")]
    name: &'static str,
    #[serde(rename = "@type")]
    r#type: &'static str,
    #[serde(rename = "@discard")]
    discard: &'static str,
}

#[derive(Serialize)]
struct Source<'a> {
    #[serde(rename = "@file")]
    file: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    seclabel: Option<Seclabel>,
}

#[derive(Serialize)]
struct Seclabel {
    #[serde(rename = "@model")]
    model: &'static str,
    #[serde(rename = "@relabel")]
    relabel: &'static str,
}

#[derive(Serialize)]
struct BackingStore<'a> {
    #[serde(rename = "@type")]
    r#type: &'static str,
    format: Format,
    source: Source<'a>,
    /// Empty: the base has no backing file of its own.
    #[serde(rename = "backingStore")]
    backing_store: (),
}

#[derive(Serialize)]
struct Format {
    #[serde(rename = "@type")]
    r#type: &'static str,
}

#[derive(Serialize)]
struct Target {
    #[serde(rename = "@dev")]
    dev: &'static str,
    #[serde(rename = "@bus")]
    bus: &'static str,
}

#[derive(Serialize)]
struct Serial<'a> {
    #[serde(rename = "@type")]
    r#type: &'static str,
    log: Log<'a>,
    target: PortTarget,
}

#[derive(Serialize)]
struct Log<'a> {
    #[serde(rename = "@file")]
    file: &'a str,
    #[serde(rename = "@append")]
    append: &'static str,
}

#[derive(Serialize)]
struct PortTarget {
    #[serde(rename = "@type", skip_serializing_if = "Option::is_none")]
    r#type: Option<&'static str>,
    #[serde(rename = "@port")]
    port: u32,
}

#[derive(Serialize)]
struct Console {
    #[serde(rename = "@type")]
    r#type: &'static str,
    target: PortTarget,
}

#[derive(Serialize)]
struct Channel {
    #[serde(rename = "@type")]
    r#type: &'static str,
    target: ChannelTarget,
}

#[derive(Serialize)]
struct ChannelTarget {
    #[serde(rename = "@type")]
    r#type: &'static str,
    #[serde(rename = "@name")]
    name: &'static str,
}

#[derive(Serialize)]
struct Controller {
    #[serde(rename = "@type")]
    r#type: &'static str,
    #[serde(rename = "@model")]
    model: &'static str,
}

#[derive(Serialize)]
struct Video {
    model: Model,
}

#[derive(Serialize)]
struct Model {
    #[serde(rename = "@model")]
    r#type: &'static str,
}

#[derive(Serialize)]
struct SnapshotDef<'a> {
    name: &'a str,
    memory: SnapshotMode,
    disks: SnapshotDisks,
}

#[derive(Serialize)]
struct SnapshotMode {
    #[serde(rename = "@snapshot")]
    snapshot: &'static str,
}

#[derive(Serialize)]
struct SnapshotDisks {
    disk: SnapshotDisk,
}

#[derive(Serialize)]
struct SnapshotDisk {
    #[serde(rename = "@name")]
    name: &'static str,
    #[serde(rename = "@snapshot")]
    snapshot: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a test reads back out of generated XML.
    #[derive(Debug, Deserialize)]
    struct Parsed {
        #[serde(rename = "@type")]
        r#type: String,
        name: String,
        memory: ParsedMemory,
        vcpu: u32,
        os: ParsedOs,
        devices: ParsedDevices,
    }
    #[derive(Debug, Deserialize)]
    struct ParsedMemory {
        #[serde(rename = "@unit")]
        unit: String,
        #[serde(rename = "$text")]
        value: u32,
    }
    #[derive(Debug, Deserialize)]
    struct ParsedOs {
        kernel: String,
        cmdline: String,
    }
    #[derive(Debug, Deserialize)]
    struct ParsedDevices {
        disk: ParsedDisk,
        serial: ParsedSerial,
        channel: ParsedChannel,
    }
    #[derive(Debug, Deserialize)]
    struct ParsedDisk {
        source: ParsedSource,
        #[serde(rename = "backingStore")]
        backing_store: ParsedBacking,
    }
    #[derive(Debug, Deserialize)]
    struct ParsedBacking {
        source: ParsedSource,
    }
    #[derive(Debug, Deserialize)]
    struct ParsedSource {
        #[serde(rename = "@file")]
        file: String,
        seclabel: Option<ParsedSeclabel>,
    }
    #[derive(Debug, Deserialize)]
    struct ParsedSeclabel {
        #[serde(rename = "@relabel")]
        relabel: String,
    }
    #[derive(Debug, Deserialize)]
    struct ParsedSerial {
        log: ParsedSource,
    }
    #[derive(Debug, Deserialize)]
    struct ParsedChannel {
        #[serde(rename = "@type")]
        r#type: String,
        target: ParsedChannelTarget,
    }
    #[derive(Debug, Deserialize)]
    struct ParsedChannelTarget {
        #[serde(rename = "@type")]
        r#type: String,
        #[serde(rename = "@name")]
        name: String,
    }

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
            user_network: false,
        }
    }

    fn parse(xml: &str) -> Parsed {
        quick_xml::de::from_str(xml).unwrap_or_else(|e| panic!("{e}: {xml}"))
    }

    #[test]
    fn a_typical_twin_parses_back_with_its_disk_memory_cpus_type_and_agent() {
        let overlay = Path::new("/var/lib/safetytwin/twins/safetytwin-web-1.qcow2");
        let xml = spec(
            "safetytwin-web-1",
            "root=/dev/vda ro console=ttyS0",
            overlay,
        )
        .render()
        .unwrap();
        let d = parse(&xml);
        assert_eq!(d.r#type, "qemu");
        assert_eq!(d.name, "safetytwin-web-1");
        assert_eq!((d.memory.unit.as_str(), d.memory.value), ("MiB", 512));
        assert_eq!(d.vcpu, 2);
        assert_eq!(d.os.kernel, "/img/vmlinuz");
        assert_eq!(d.os.cmdline, "root=/dev/vda ro console=ttyS0");
        assert_eq!(d.devices.disk.source.file, overlay.to_str().unwrap());
        let base = &d.devices.disk.backing_store.source;
        assert_eq!(base.file, "/img/rootfs.qcow2");
        assert_eq!(base.seclabel.as_ref().unwrap().relabel, "no");
        assert_eq!(d.devices.serial.log.file, "/state/c.log");
        assert_eq!(d.devices.channel.r#type, "unix");
        assert_eq!(d.devices.channel.target.r#type, "virtio");
        assert_eq!(d.devices.channel.target.name, AGENT_CHANNEL);
        // The empty elements libvirt needs are there, as elements.
        for empty in ["<acpi/>", "<apic/>", "<backingStore/>"] {
            assert!(xml.contains(empty), "{empty} missing: {xml}");
        }
        // A twin has no network; a test host has a user-mode NIC.
        assert!(!xml.contains("<interface"), "{xml}");
        let host = DomainSpec {
            user_network: true,
            ..spec("safetytwin-host-1", "root=/dev/vda", overlay)
        };
        let xml = host.render().unwrap();
        assert!(
            xml.contains(r#"<interface type="user"><model type="virtio"/></interface>"#),
            "{xml}"
        );
    }

    #[test]
    fn values_that_look_like_xml_stay_values() {
        let name = "t&1\"><evil/>";
        let cmdline = "root=/dev/vda x='{disk}' </cmdline><devices/>";
        let disk = Path::new("/s/<d>&\"q'.qcow2");
        let xml = spec(name, cmdline, disk).render().unwrap();
        for injected in ["<evil/>", "</cmdline><devices/>", "<d>"] {
            assert!(!xml.contains(injected), "{injected} got in: {xml}");
        }
        let d = parse(&xml);
        assert_eq!(d.name, name);
        assert_eq!(d.os.cmdline, cmdline);
        assert_eq!(d.devices.disk.source.file, disk.to_str().unwrap());
        assert_eq!(d.devices.channel.target.name, AGENT_CHANNEL);

        let snap = snapshot("a<b>&\"c").unwrap();
        assert!(!snap.contains("<b>"), "{snap}");
        #[derive(Deserialize)]
        struct Snap {
            name: String,
        }
        let back: Snap = quick_xml::de::from_str(&snap).unwrap();
        assert_eq!(back.name, "a<b>&\"c");
        assert!(snap.contains("<memory snapshot=\"internal\"/>"), "{snap}");
        assert!(
            snap.contains("<disk name=\"vda\" snapshot=\"internal\"/>"),
            "{snap}"
        );
    }

    #[test]
    fn snapshot_creation_time_is_read() {
        let xml = "<domainsnapshot>\n  <name>a</name>\n  <state>running</state>\n  \
                   <creationTime>1735689600</creationTime>\n  <memory snapshot='internal'/>\n  \
                   <domain type='kvm'><name>x</name></domain>\n</domainsnapshot>";
        assert_eq!(creation_time(xml), Some(1_735_689_600));
        assert_eq!(creation_time("<domainsnapshot/>"), None);
        assert_eq!(
            creation_time("<domainsnapshot><creationTime>soon</creationTime></domainsnapshot>"),
            None
        );
    }
}
