//! Resolves the kernel struct offsets the probes need from BTF (see
//! `safetytwin_common::offsets`). One table names every field, so the loader, the error
//! messages and the test against `bpftool` all read the same list.

use safetytwin_common::offsets::Offsets;

use crate::btf::{Btf, BtfError};

/// One kernel struct member a probe reads.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// Struct name, e.g. `task_struct`.
    pub strukt: &'static str,
    /// Member name; may sit inside anonymous members.
    pub member: &'static str,
    slot: fn(&mut Offsets) -> &mut u32,
}

/// Every offset in [`Offsets`], with where it comes from.
pub const FIELDS: &[Field] = &[
    Field {
        strukt: "task_struct",
        member: "pid",
        slot: |o| &mut o.task_pid,
    },
    Field {
        strukt: "task_struct",
        member: "tgid",
        slot: |o| &mut o.task_tgid,
    },
    Field {
        strukt: "task_struct",
        member: "real_parent",
        slot: |o| &mut o.task_real_parent,
    },
    Field {
        strukt: "task_struct",
        member: "mm",
        slot: |o| &mut o.task_mm,
    },
    Field {
        strukt: "task_struct",
        member: "exit_code",
        slot: |o| &mut o.task_exit_code,
    },
    Field {
        strukt: "task_struct",
        member: "comm",
        slot: |o| &mut o.task_comm,
    },
    Field {
        strukt: "mm_struct",
        member: "arg_start",
        slot: |o| &mut o.mm_arg_start,
    },
    Field {
        strukt: "mm_struct",
        member: "arg_end",
        slot: |o| &mut o.mm_arg_end,
    },
    Field {
        strukt: "linux_binprm",
        member: "filename",
        slot: |o| &mut o.binprm_filename,
    },
    Field {
        strukt: "cgroup",
        member: "root",
        slot: |o| &mut o.cgroup_root,
    },
    Field {
        strukt: "cgroup",
        member: "level",
        slot: |o| &mut o.cgroup_level,
    },
    Field {
        strukt: "cgroup",
        member: "kn",
        slot: |o| &mut o.cgroup_kn,
    },
    Field {
        strukt: "cgroup_root",
        member: "hierarchy_id",
        slot: |o| &mut o.cgroup_root_hierarchy_id,
    },
    Field {
        strukt: "kernfs_node",
        member: "id",
        slot: |o| &mut o.kernfs_node_id,
    },
];

/// A field the probes need is missing from this kernel's BTF.
#[derive(Debug, thiserror::Error)]
#[error("kernel {kernel}: cannot resolve {strukt}.{member}: {source}")]
pub struct OffsetError {
    /// `uname -r` of the running kernel.
    pub kernel: String,
    /// The struct.
    pub strukt: &'static str,
    /// The member.
    pub member: &'static str,
    /// Why it failed.
    #[source]
    pub source: BtfError,
}

/// Resolves every entry of [`FIELDS`]; `kernel` names the kernel in errors.
pub fn resolve(btf: &Btf, kernel: &str) -> Result<Offsets, OffsetError> {
    let mut offsets = Offsets::default();
    for field in FIELDS {
        let off = btf
            .member_offset(field.strukt, field.member)
            .map_err(|source| OffsetError {
                kernel: kernel.to_owned(),
                strukt: field.strukt,
                member: field.member,
                source,
            })?;
        *(field.slot)(&mut offsets) = off;
    }
    Ok(offsets)
}

/// The offset stored for `field` in `offsets`.
pub fn get(offsets: &Offsets, field: &Field) -> u32 {
    let mut copy = *offsets;
    *(field.slot)(&mut copy)
}

/// `uname -r`, for error messages.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_offset_slot_is_distinct() {
        // Writing a different value through each slot must land in a different field.
        let mut offsets = Offsets::default();
        for (i, field) in FIELDS.iter().enumerate() {
            *(field.slot)(&mut offsets) = i as u32 + 1;
        }
        for (i, field) in FIELDS.iter().enumerate() {
            assert_eq!(get(&offsets, field), i as u32 + 1, "{}", field.member);
        }
    }

    #[test]
    fn missing_member_names_field_and_kernel() {
        let empty = crate::btf::tests::build(&[], b"\0");
        let btf = Btf::parse(&empty).unwrap();
        let err = resolve(&btf, "9.9.9-test").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("9.9.9-test") && msg.contains("task_struct.pid"),
            "{msg}"
        );
    }
}
