//! The XML libvirt is given and returns: a twin's domain, a snapshot's definition, and the
//! creation time read back from a snapshot.

use std::{io, path::Path};

use super::VmError;

const TEMPLATE: &str = include_str!("domain.xml");

/// The values `domain.xml` is filled with.
#[derive(Debug)]
pub(super) struct DomainSpec<'a> {
    pub(super) name: &'a str,
    pub(super) memory_mib: u32,
    pub(super) vcpus: u32,
    pub(super) domain_type: &'a str,
    pub(super) kernel: &'a Path,
    pub(super) initrd: &'a Path,
    pub(super) cmdline: &'a str,
    pub(super) disk: &'a Path,
    pub(super) base: &'a Path,
    pub(super) console_log: &'a Path,
}

impl DomainSpec<'_> {
    pub(super) fn render(&self) -> Result<String, VmError> {
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

/// `<creationTime>` of a snapshot's XML.
pub(super) fn creation_time(xml: &str) -> Option<i64> {
    let start = xml.find("<creationTime>")? + "<creationTime>".len();
    let len = xml[start..].find('<')?;
    xml[start..start + len].trim().parse().ok()
}

/// An internal snapshot named `name`. Stated rather than left to libvirt's default, which has
/// changed between releases: internal snapshots keep disk and memory inside the overlay, and
/// must not be mixed with external ones.
pub(super) fn snapshot(name: &str) -> Result<String, VmError> {
    Ok(format!(
        "<domainsnapshot><name>{}</name><memory snapshot='internal'/>\
         <disks><disk name='vda' snapshot='internal'/></disks></domainsnapshot>",
        xml_escape(name)
    ))
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
    fn snapshot_creation_time_is_read() {
        let xml = "<domainsnapshot>\n  <name>a</name>\n  <state>running</state>\n  \
                   <creationTime>1735689600</creationTime>\n</domainsnapshot>";
        assert_eq!(creation_time(xml), Some(1_735_689_600));
        assert_eq!(creation_time("<domainsnapshot/>"), None);
    }
}
