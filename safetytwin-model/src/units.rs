//! systemd unit names from cgroup paths. Pure: no I/O.
//!
//! systemd gives every service, scope and slice a cgroup named after the unit, nested under its
//! slices (`/system.slice/system-getty.slice/getty@tty1.service`). Sub-cgroups a unit creates
//! (delegation) belong to that unit; units of a user manager sit below `user@UID.service`.

/// Unit types that own cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitType {
    /// `.service`
    Service,
    /// `.scope`
    Scope,
    /// `.slice`
    Slice,
    /// `.socket` (while its Exec* commands run)
    Socket,
    /// `.mount`
    Mount,
    /// `.swap`
    Swap,
}

/// The cgroup-owning type of a unit name, from its suffix.
pub fn unit_type_of(name: &str) -> Option<UnitType> {
    UnitType::of(name)
}

impl UnitType {
    fn of(name: &str) -> Option<UnitType> {
        let (_, suffix) = name.rsplit_once('.')?;
        Some(match suffix {
            "service" => UnitType::Service,
            "scope" => UnitType::Scope,
            "slice" => UnitType::Slice,
            "socket" => UnitType::Socket,
            "mount" => UnitType::Mount,
            "swap" => UnitType::Swap,
            _ => return None,
        })
    }

    /// The suffix, e.g. `service`.
    pub fn as_str(self) -> &'static str {
        match self {
            UnitType::Service => "service",
            UnitType::Scope => "scope",
            UnitType::Slice => "slice",
            UnitType::Socket => "socket",
            UnitType::Mount => "mount",
            UnitType::Swap => "swap",
        }
    }
}

/// The unit a cgroup belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitRef {
    /// Full unit name, e.g. `getty@tty1.service`.
    pub name: String,
    /// Its type.
    pub unit_type: UnitType,
    /// The slice it sits in (`-.slice` at the top).
    pub slice: String,
    /// For templated units, the template (`getty@.service`) and the instance (`tty1`).
    pub template: Option<(String, String)>,
    /// The user manager (`user@1000.service`) owning it, for units of a user session.
    pub manager: Option<String>,
    /// Path of the unit's own cgroup (a prefix of the path asked about).
    pub cgroup: String,
}

/// The unit owning the cgroup at `path` (relative to the hierarchy root), if systemd made it.
pub fn unit_of_cgroup(path: &str) -> Option<UnitRef> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    // The unit is the outermost non-slice unit component, or the innermost slice when the
    // cgroup is a slice itself. Components after the unit are its own sub-cgroups; a user
    // manager's units are found by restarting below `user@UID.service`.
    let mut manager = None;
    let mut start = 0;
    if let Some(i) = parts
        .iter()
        .position(|p| p.starts_with("user@") && p.ends_with(".service"))
        && i + 1 < parts.len()
        && UnitType::of(parts[i + 1]).is_some()
    {
        manager = Some(parts[i].to_owned());
        start = i + 1;
    }
    let scoped = &parts[start..];
    let mut unit_at = None;
    for (i, part) in scoped.iter().enumerate() {
        match UnitType::of(part) {
            None => break,
            Some(UnitType::Slice) => unit_at = Some(i),
            Some(_) => {
                unit_at = Some(i);
                break;
            }
        }
    }
    let i = unit_at?;
    let name = scoped[i].to_owned();
    let unit_type = UnitType::of(&name)?;
    let slice = match i {
        0 => "-.slice".to_owned(),
        _ => scoped[i - 1].to_owned(),
    };
    let template = name.split_once('@').and_then(|(prefix, rest)| {
        let (instance, suffix) = rest.rsplit_once('.')?;
        (!instance.is_empty()).then(|| (format!("{prefix}@.{suffix}"), instance.to_owned()))
    });
    let cgroup = format!("/{}", parts[..start + i + 1].join("/"));
    Some(UnitRef {
        name,
        unit_type,
        slice,
        template,
        manager,
        cgroup,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(path: &str) -> UnitRef {
        unit_of_cgroup(path).unwrap_or_else(|| panic!("no unit for {path}"))
    }

    #[test]
    fn plain_service_in_system_slice() {
        let u = unit("/system.slice/nginx.service");
        assert_eq!(u.name, "nginx.service");
        assert_eq!(u.unit_type, UnitType::Service);
        assert_eq!(u.slice, "system.slice");
        assert_eq!(u.template, None);
        assert_eq!(u.cgroup, "/system.slice/nginx.service");
    }

    #[test]
    fn templated_unit_in_nested_slice() {
        let u = unit("/system.slice/system-getty.slice/getty@tty1.service");
        assert_eq!(u.name, "getty@tty1.service");
        assert_eq!(u.slice, "system-getty.slice");
        assert_eq!(
            u.template,
            Some(("getty@.service".to_owned(), "tty1".to_owned()))
        );
    }

    #[test]
    fn slices_scopes_and_root_units() {
        let s = unit("/system.slice");
        assert_eq!(
            (s.name.as_str(), s.unit_type, s.slice.as_str()),
            ("system.slice", UnitType::Slice, "-.slice")
        );
        let s = unit("/system.slice/system-getty.slice");
        assert_eq!(
            (s.name.as_str(), s.slice.as_str()),
            ("system-getty.slice", "system.slice")
        );
        let init = unit("/init.scope");
        assert_eq!(
            (init.unit_type, init.slice.as_str()),
            (UnitType::Scope, "-.slice")
        );
        let session = unit("/user.slice/user-1000.slice/session-3.scope");
        assert_eq!(
            (session.name.as_str(), session.slice.as_str()),
            ("session-3.scope", "user-1000.slice")
        );
    }

    #[test]
    fn delegated_sub_cgroups_belong_to_their_unit() {
        let u = unit("/system.slice/docker.service/payload/inner");
        assert_eq!(u.name, "docker.service");
        assert_eq!(u.cgroup, "/system.slice/docker.service");
    }

    #[test]
    fn user_manager_units() {
        let u = unit("/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service");
        assert_eq!(u.name, "foo.service");
        assert_eq!(u.slice, "app.slice");
        assert_eq!(u.manager.as_deref(), Some("user@1000.service"));
        let m = unit("/user.slice/user-1000.slice/user@1000.service");
        assert_eq!((m.name.as_str(), m.manager), ("user@1000.service", None));
        assert_eq!(m.template, Some(("user@.service".into(), "1000".into())));
    }

    #[test]
    fn cgroups_systemd_did_not_make_are_not_units() {
        assert_eq!(unit_of_cgroup("/"), None);
        assert_eq!(unit_of_cgroup("/docker/abc123"), None);
        assert_eq!(unit_of_cgroup("/mygroup/x.service"), None);
    }
}
