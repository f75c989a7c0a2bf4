//! Unit definitions as files: which unit a path in a unit directory is about, and a unit's
//! definition (fragment, drop-ins, enablement) from the model's files. Pure.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    model::{FileKind, FileState, HostModel, Unit, files_below},
    units::UnitType,
};

/// Unit directories, highest precedence first.
pub const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/run/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
];

fn unit_type(name: &str) -> Option<UnitType> {
    crate::units::unit_type_of(name)
}

/// Units come in more types than own cgroups (targets, timers, paths…).
fn is_unit_name(name: &str) -> bool {
    const SUFFIXES: &[&str] = &[
        ".service",
        ".socket",
        ".target",
        ".timer",
        ".path",
        ".mount",
        ".automount",
        ".swap",
        ".slice",
        ".scope",
        ".device",
    ];
    SUFFIXES
        .iter()
        .any(|s| name.len() > s.len() && name.ends_with(s))
}

/// The unit a file in a unit directory defines, configures or enables:
/// `D/name`, `D/name.d/*.conf`, `D/*.wants/name`, `D/*.requires/name`.
pub fn unit_for_path(path: &str) -> Option<String> {
    let rest = UNIT_DIRS
        .iter()
        .find_map(|d| path.strip_prefix(d)?.strip_prefix('/'))?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [name] if is_unit_name(name) => Some((*name).to_owned()),
        [dir, file] => {
            if let Some(name) = dir.strip_suffix(".d") {
                (is_unit_name(name) && file.ends_with(".conf")).then(|| name.to_owned())
            } else if dir.ends_with(".wants") || dir.ends_with(".requires") {
                is_unit_name(file).then(|| (*file).to_owned())
            } else {
                None
            }
        }
        _ => None,
    }
}

/// `foo@bar.service` → `foo@.service`.
fn template_of(name: &str) -> Option<String> {
    let (prefix, rest) = name.split_once('@')?;
    let (instance, suffix) = rest.rsplit_once('.')?;
    (!instance.is_empty()).then(|| format!("{prefix}@.{suffix}"))
}

fn present(files: &BTreeMap<String, FileState>, path: &str) -> bool {
    files
        .get(path)
        .is_some_and(|f| matches!(f.kind, FileKind::Regular | FileKind::Symlink))
}

/// The unit `name` as the model knows it; `None` when it has neither a cgroup nor any file.
/// For more than one unit of the same model, build [`UnitFiles`] once and ask it.
pub fn unit_view(model: &HostModel, name: &str) -> Option<Unit> {
    UnitFiles::unindexed(model).view(name)
}

/// Every enabling symlink (`D/*.wants/NAME`, `D/*.requires/NAME`) of the unit directories,
/// with the name it enables.
fn enabling(files: &BTreeMap<String, FileState>) -> impl Iterator<Item = (&str, &String)> {
    UNIT_DIRS.iter().flat_map(move |dir| {
        files_below(files, dir).filter_map(move |(path, f)| {
            let (d, name) = path[dir.len() + 1..].split_once('/')?;
            (f.kind == FileKind::Symlink && (d.ends_with(".wants") || d.ends_with(".requires")))
                .then_some((name, path))
        })
    })
}

/// A model's unit files, indexed so that each unit's view costs `O(log n)` lookups: the
/// enabling symlinks can only be found by scanning, so they are scanned once per model rather
/// than once per unit (16,000 unit files made `Diff` quadratic).
pub struct UnitFiles<'a> {
    model: &'a HostModel,
    /// The enabling symlinks, by the unit name they link (`None`: scanned per view).
    enabled_by: Option<BTreeMap<&'a str, BTreeSet<String>>>,
}

impl<'a> UnitFiles<'a> {
    /// Indexes `model`'s unit directories (one pass over the files in them).
    pub fn new(model: &'a HostModel) -> Self {
        let mut index: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for (name, path) in enabling(&model.files) {
            index.entry(name).or_default().insert(path.clone());
        }
        UnitFiles {
            model,
            enabled_by: Some(index),
        }
    }

    /// Without the index, for one view: a scan that clones only what it finds.
    pub(crate) fn unindexed(model: &'a HostModel) -> Self {
        UnitFiles {
            model,
            enabled_by: None,
        }
    }

    /// The unit `name`; `None` when it has neither a cgroup nor any file.
    pub fn view(&self, name: &str) -> Option<Unit> {
        let files = &self.model.files;
        let template = template_of(name);
        let fragment_path = UNIT_DIRS
            .iter()
            .map(|d| format!("{d}/{name}"))
            .find(|p| present(files, p))
            .or_else(|| {
                let t = template.as_ref()?;
                UNIT_DIRS
                    .iter()
                    .map(|d| format!("{d}/{t}"))
                    .find(|p| present(files, p))
            });
        let mut dropins = Vec::new();
        for dir in UNIT_DIRS {
            for owner in std::iter::once(name).chain(template.as_deref()) {
                dropins.extend(
                    files_below(files, &format!("{dir}/{owner}.d"))
                        .filter(|(p, f)| p.ends_with(".conf") && f.kind != FileKind::Directory)
                        .map(|(p, _)| p.clone()),
                );
            }
        }
        let enabled_by = match &self.enabled_by {
            Some(index) => index.get(name).cloned().unwrap_or_default(),
            None => enabling(files)
                .filter(|(n, _)| *n == name)
                .map(|(_, p)| p.clone())
                .collect(),
        };
        let runtime = self.model.units.get(name).cloned();
        if runtime.is_none()
            && fragment_path.is_none()
            && dropins.is_empty()
            && enabled_by.is_empty()
        {
            return None;
        }
        Some(Unit {
            name: name.to_owned(),
            unit_type: unit_type(name),
            runtime,
            fragment_path,
            dropins,
            enabled_by,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Content;

    fn file(kind: FileKind) -> FileState {
        FileState {
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 1,
            sha256: None,
            content: Content::None,
            link_target: None,
        }
    }

    #[test]
    fn paths_map_to_the_unit_they_concern() {
        let u = |p: &str| unit_for_path(p);
        assert_eq!(
            u("/etc/systemd/system/nginx.service").as_deref(),
            Some("nginx.service")
        );
        assert_eq!(
            u("/etc/systemd/system/nginx.service.d/limits.conf").as_deref(),
            Some("nginx.service")
        );
        assert_eq!(
            u("/etc/systemd/system/multi-user.target.wants/nginx.service").as_deref(),
            Some("nginx.service")
        );
        assert_eq!(
            u("/lib/systemd/system/getty@.service").as_deref(),
            Some("getty@.service")
        );
        assert_eq!(u("/etc/systemd/system/nginx.service.d/notes.txt"), None);
        assert_eq!(u("/etc/nginx/nginx.conf"), None);
        assert_eq!(u("/etc/systemd/system.conf"), None);
    }

    #[test]
    fn definition_from_files_with_precedence_templates_and_enablement() {
        let mut m = HostModel::default();
        for (p, k) in [
            ("/lib/systemd/system/demo.service", FileKind::Regular),
            ("/etc/systemd/system/demo.service", FileKind::Regular),
            (
                "/etc/systemd/system/demo.service.d/override.conf",
                FileKind::Regular,
            ),
            (
                "/etc/systemd/system/multi-user.target.wants/demo.service",
                FileKind::Symlink,
            ),
            ("/lib/systemd/system/getty@.service", FileKind::Regular),
            (
                "/etc/systemd/system/getty.target.wants/getty@tty1.service",
                FileKind::Symlink,
            ),
        ] {
            m.files.insert(p.to_owned(), file(k));
        }
        let demo = unit_view(&m, "demo.service").unwrap();
        assert_eq!(
            demo.fragment_path.as_deref(),
            Some("/etc/systemd/system/demo.service")
        );
        assert_eq!(
            demo.dropins,
            ["/etc/systemd/system/demo.service.d/override.conf"]
        );
        assert_eq!(
            demo.enabled_by.iter().collect::<Vec<_>>(),
            ["/etc/systemd/system/multi-user.target.wants/demo.service"]
        );
        assert!(!demo.active());
        let getty = unit_view(&m, "getty@tty1.service").unwrap();
        assert_eq!(
            getty.fragment_path.as_deref(),
            Some("/lib/systemd/system/getty@.service")
        );
        assert_eq!(getty.enabled_by.len(), 1);
        assert!(unit_view(&m, "absent.service").is_none());
        // The index answers what the scan does.
        let index = UnitFiles::new(&m);
        for name in ["demo.service", "getty@tty1.service", "absent.service"] {
            assert_eq!(index.view(name), unit_view(&m, name), "{name}");
        }
    }

    /// `units` unit files, each enabled.
    fn enabled_units(units: usize) -> HostModel {
        let mut m = HostModel::default();
        for i in 0..units {
            let name = format!("u{i:05}.service");
            m.files.insert(
                format!("/etc/systemd/system/{name}"),
                file(FileKind::Regular),
            );
            m.files.insert(
                format!("/etc/systemd/system/multi-user.target.wants/{name}"),
                file(FileKind::Symlink),
            );
        }
        m
    }

    /// The fastest of three diffs of `m` against the empty model.
    fn fastest_diff(m: &HostModel) -> std::time::Duration {
        (0..3)
            .map(|_| {
                let started = std::time::Instant::now();
                std::hint::black_box(HostModel::default().diff(m));
                started.elapsed()
            })
            .min()
            .expect("three runs")
    }

    /// The review's case: 16,000 unit files, each enabled, diffed against the empty model.
    /// Before the index every unit scanned every file of its directory (16 s in the replayer).
    /// Judged by how the time grows, not by a wall-clock bound a loaded machine could miss:
    /// eight times the units cost about eight times as long (n log n), where the scan cost 64.
    #[test]
    fn diff_of_16000_unit_files_is_near_linear() {
        const UNITS: usize = 16_000;
        let m = enabled_units(UNITS);
        let delta = HostModel::default().diff(&m);
        assert_eq!(delta.units.len(), UNITS);
        assert_eq!(delta.files.len(), 2 * UNITS);
        let crate::model::UnitDelta::Upsert(u) = &delta.units[UNITS - 1] else {
            panic!("expected an upsert");
        };
        assert_eq!(
            u.enabled_by.iter().collect::<Vec<_>>(),
            [&format!(
                "/etc/systemd/system/multi-user.target.wants/{}",
                u.name
            )]
        );

        let small = fastest_diff(&enabled_units(UNITS / 8));
        let large = fastest_diff(&m);
        let growth = large.as_secs_f64() / small.as_secs_f64().max(1e-6);
        eprintln!(
            "diff of {} units: {small:?}; of {UNITS}: {large:?} ({growth:.1}x)",
            UNITS / 8
        );
        assert!(growth < 24.0, "8x the units took {growth:.1}x as long");
    }
}
