//! Folding changes into the model within a window, and cutting the window's net changes.

use std::collections::BTreeMap;

use crate::{
    accounts::{Group, User},
    model::{
        Activity, Change, DeltaBatch, FileDelta, FileState, GroupDelta, HostModel, PackageDelta,
        Process, ProcessDelta, Unit, UnitDelta, UnitRuntime, UserDelta,
    },
    os::OsRelease,
    packages::Package,
    unitfiles::{UnitFiles, unit_for_path},
    units::unit_of_cgroup,
};

/// What a window touched, with each touched entry's value from before the window.
#[derive(Debug, Default, Clone)]
pub struct Window {
    old_files: BTreeMap<String, Option<FileState>>,
    old_processes: BTreeMap<u32, Option<Process>>,
    old_units: BTreeMap<String, Option<Unit>>,
    old_packages: BTreeMap<String, Option<Package>>,
    old_users: BTreeMap<String, Option<User>>,
    old_groups: BTreeMap<String, Option<Group>>,
    /// The release before the window, once the window observed one.
    old_os: Option<Option<OsRelease>>,
    activity: Activity,
}

/// Notes in `old` the value before the window of each key of `before` and `after` (a whole set
/// observed at once replaces `before` by `after`).
fn touch_all<V: Clone>(
    old: &mut BTreeMap<String, Option<V>>,
    before: &BTreeMap<String, V>,
    after: &BTreeMap<String, V>,
) {
    for key in before.keys().chain(after.keys()) {
        if !old.contains_key(key) {
            old.insert(key.clone(), before.get(key).cloned());
        }
    }
}

impl Window {
    fn file(&mut self, model: &HostModel, path: &str) {
        if !self.old_files.contains_key(path) {
            self.old_files
                .insert(path.to_owned(), model.files.get(path).cloned());
        }
    }

    fn process(&mut self, model: &HostModel, pid: u32) {
        self.old_processes
            .entry(pid)
            .or_insert_with(|| model.processes.get(&pid).cloned());
    }

    fn unit(&mut self, model: &HostModel, name: &str) {
        self.unit_in(&UnitFiles::unindexed(model), name);
    }

    fn unit_in(&mut self, units: &UnitFiles<'_>, name: &str) {
        if !self.old_units.contains_key(name) {
            self.old_units.insert(name.to_owned(), units.view(name));
        }
    }
}

/// The unit whose own cgroup is `path` (not a sub-cgroup of it).
fn own_unit(path: &str) -> Option<String> {
    unit_of_cgroup(path)
        .filter(|u| u.cgroup == path)
        .map(|u| u.name)
}

fn net<K: Ord + Clone, V: PartialEq + Clone, D>(
    old: BTreeMap<K, Option<V>>,
    now: impl Fn(&K) -> Option<V>,
    upsert: impl Fn(K, V) -> D,
    remove: impl Fn(K) -> D,
) -> Vec<D> {
    old.into_iter()
        .filter_map(|(key, before)| match (before, now(&key)) {
            (Some(b), Some(a)) if a == b => None,
            (_, Some(a)) => Some(upsert(key, a)),
            (Some(_), None) => Some(remove(key)),
            (None, None) => None,
        })
        .collect()
}

impl HostModel {
    /// Folds one change into the model, noting in `window` what it touched.
    pub fn apply(&mut self, change: &Change, window: &mut Window) {
        window.activity.changes += 1;
        match change {
            Change::ProcessStarted(p) => {
                window.process(self, p.pid);
                if !self.processes.contains_key(&p.pid) {
                    window.activity.started += 1;
                }
                self.processes.insert(p.pid, p.clone());
            }
            Change::ProcessExited { pid } => {
                if self.processes.contains_key(pid) {
                    window.process(self, *pid);
                    window.activity.exited += 1;
                    if window.old_processes.get(pid) == Some(&None) {
                        window.activity.short_lived += 1;
                    }
                    self.processes.remove(pid);
                }
            }
            Change::CgroupCreated { path, id } => {
                if let Some(name) = own_unit(path) {
                    window.unit(self, &name);
                    self.units.entry(name).or_insert_with(|| UnitRuntime {
                        cgroup: path.clone(),
                        cgroup_id: *id,
                        active: false,
                        main_pid: None,
                    });
                }
            }
            Change::CgroupRemoved { path } => {
                if let Some(name) = own_unit(path) {
                    window.unit(self, &name);
                    self.units.remove(&name);
                }
            }
            Change::CgroupPopulated {
                path,
                id,
                populated,
            } => {
                if let Some(name) = own_unit(path) {
                    window.unit(self, &name);
                    let rt = self.units.entry(name).or_insert_with(|| UnitRuntime {
                        cgroup: path.clone(),
                        cgroup_id: *id,
                        active: false,
                        main_pid: None,
                    });
                    rt.active = *populated;
                    if !populated {
                        rt.main_pid = None;
                    }
                }
            }
            Change::TaskAttached { path, pid } => {
                let Some(unit) = unit_of_cgroup(path) else {
                    return;
                };
                if self
                    .units
                    .get(&unit.name)
                    .is_some_and(|rt| rt.main_pid.is_none())
                {
                    window.unit(self, &unit.name);
                    if let Some(rt) = self.units.get_mut(&unit.name) {
                        rt.main_pid = Some(*pid);
                    }
                }
            }
            Change::PackagesObserved(packages) => {
                touch_all(&mut window.old_packages, &self.packages, packages);
                self.packages = packages.clone();
            }
            Change::OsObserved(os) => {
                window.old_os.get_or_insert_with(|| self.os.clone());
                self.os = Some(os.clone());
            }
            Change::AccountsObserved { users, groups } => {
                touch_all(&mut window.old_users, &self.users, users);
                touch_all(&mut window.old_groups, &self.groups, groups);
                self.users = users.clone();
                self.groups = groups.clone();
            }
            Change::FileObserved { path, state } => {
                if let Some(name) = unit_for_path(path) {
                    window.unit(self, &name);
                }
                window.file(self, path);
                match state {
                    Some(s) => {
                        self.files.insert(path.clone(), s.clone());
                    }
                    None => {
                        self.files.remove(path);
                    }
                }
            }
        }
    }

    /// The net changes of `window`: each touched entry compared with its value before it.
    pub fn cut(&self, window: Window) -> DeltaBatch {
        let units = UnitFiles::new(self);
        DeltaBatch {
            files: net(
                window.old_files,
                |p| self.files.get(p).cloned(),
                |path, state| FileDelta::Upsert { path, state },
                |path| FileDelta::Remove { path },
            ),
            units: net(
                window.old_units,
                |n| units.view(n),
                |_, unit| UnitDelta::Upsert(unit),
                |name| UnitDelta::Remove { name },
            ),
            processes: net(
                window.old_processes,
                |pid| self.processes.get(pid).cloned(),
                |_, p| ProcessDelta::Upsert(p),
                |pid| ProcessDelta::Remove { pid },
            ),
            packages: net(
                window.old_packages,
                |k| self.packages.get(k).cloned(),
                |_, p| PackageDelta::Upsert(p),
                |key| {
                    let (name, arch) = key.split_once(':').unwrap_or((&key, ""));
                    PackageDelta::Remove {
                        name: name.to_owned(),
                        arch: arch.to_owned(),
                    }
                },
            ),
            users: net(
                window.old_users,
                |n| self.users.get(n).cloned(),
                |_, u| UserDelta::Upsert(u),
                |name| UserDelta::Remove { name },
            ),
            groups: net(
                window.old_groups,
                |n| self.groups.get(n).cloned(),
                |_, g| GroupDelta::Upsert(g),
                |name| GroupDelta::Remove { name },
            ),
            // Once known, a release is only ever replaced (`OsObserved` holds one).
            os: window
                .old_os
                .filter(|before| *before != self.os)
                .and_then(|_| self.os.clone()),
            activity: window.activity,
        }
    }

    /// The net changes that turn `self` into `other` (Diff between two points of history).
    pub fn diff(&self, other: &HostModel) -> DeltaBatch {
        let mut w = Window::default();
        for path in self.files.keys().chain(other.files.keys()) {
            w.file(self, path);
        }
        for pid in self.processes.keys().chain(other.processes.keys()) {
            w.process(self, *pid);
        }
        touch_all(&mut w.old_packages, &self.packages, &other.packages);
        touch_all(&mut w.old_users, &self.users, &other.users);
        touch_all(&mut w.old_groups, &self.groups, &other.groups);
        w.old_os = Some(self.os.clone());
        let names = |m: &HostModel| -> Vec<String> {
            m.units
                .keys()
                .cloned()
                .chain(m.files.keys().filter_map(|p| unit_for_path(p)))
                .collect()
        };
        let units = UnitFiles::new(self);
        for name in names(self).into_iter().chain(names(other)) {
            w.unit_in(&units, &name);
        }
        other.cut(w)
    }

    /// The whole model as one batch of upserts: what a resync sends when history was lost.
    pub fn restate(&self) -> DeltaBatch {
        let mut names: std::collections::BTreeSet<String> = self.units.keys().cloned().collect();
        names.extend(self.files.keys().filter_map(|p| unit_for_path(p)));
        let units = UnitFiles::new(self);
        DeltaBatch {
            files: self
                .files
                .iter()
                .map(|(path, state)| FileDelta::Upsert {
                    path: path.clone(),
                    state: state.clone(),
                })
                .collect(),
            units: names
                .iter()
                .filter_map(|n| units.view(n))
                .map(UnitDelta::Upsert)
                .collect(),
            processes: self
                .processes
                .values()
                .map(|p| ProcessDelta::Upsert(p.clone()))
                .collect(),
            packages: self
                .packages
                .values()
                .map(|p| PackageDelta::Upsert(p.clone()))
                .collect(),
            users: self
                .users
                .values()
                .map(|u| UserDelta::Upsert(u.clone()))
                .collect(),
            groups: self
                .groups
                .values()
                .map(|g| GroupDelta::Upsert(g.clone()))
                .collect(),
            os: self.os.clone(),
            activity: Default::default(),
        }
    }

    /// The processes running in unit `name`'s own cgroup (not in cgroups it delegated below).
    pub fn unit_tasks(&self, name: &str) -> Vec<u32> {
        let Some(rt) = self.units.get(name) else {
            return Vec::new();
        };
        self.processes
            .values()
            .filter(|p| p.cgroup_id == rt.cgroup_id)
            .map(|p| p.pid)
            .collect()
    }

    /// Folds a batch cut by [`HostModel::cut`] into this model (the replayer's side).
    pub fn apply_batch(&mut self, batch: &DeltaBatch) {
        for d in &batch.files {
            match d {
                FileDelta::Upsert { path, state } => {
                    self.files.insert(path.clone(), state.clone());
                }
                FileDelta::Remove { path } => {
                    self.files.remove(path);
                }
            }
        }
        for d in &batch.processes {
            match d {
                ProcessDelta::Upsert(p) => {
                    self.processes.insert(p.pid, p.clone());
                }
                ProcessDelta::Remove { pid } => {
                    self.processes.remove(pid);
                }
            }
        }
        if let Some(os) = &batch.os {
            self.os = Some(os.clone());
        }
        for d in &batch.packages {
            match d {
                PackageDelta::Upsert(p) => {
                    self.packages.insert(p.key(), p.clone());
                }
                PackageDelta::Remove { name, arch } => {
                    self.packages.remove(&crate::packages::key(name, arch));
                }
            }
        }
        for d in &batch.users {
            match d {
                UserDelta::Upsert(u) => {
                    self.users.insert(u.name.clone(), u.clone());
                }
                UserDelta::Remove { name } => {
                    self.users.remove(name);
                }
            }
        }
        for d in &batch.groups {
            match d {
                GroupDelta::Upsert(g) => {
                    self.groups.insert(g.name.clone(), g.clone());
                }
                GroupDelta::Remove { name } => {
                    self.groups.remove(name);
                }
            }
        }
        for d in &batch.units {
            match d {
                UnitDelta::Upsert(Unit {
                    name,
                    runtime: Some(rt),
                    ..
                }) => {
                    self.units.insert(name.clone(), rt.clone());
                }
                UnitDelta::Upsert(Unit { name, .. }) | UnitDelta::Remove { name } => {
                    self.units.remove(name);
                }
            }
        }
    }
}
