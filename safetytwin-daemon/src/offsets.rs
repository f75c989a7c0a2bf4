//! Resolves the kernel struct offsets the probes need from BTF (see
//! `safetytwin_common::offsets`). One table names every field, so the loader, the error
//! messages and the test against `bpftool` all read the same list.

use safetytwin_common::offsets::{Offsets, SYS_ENTER_ARGS_OFFSET, SYSCALL_NR_OFFSET};

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
    Field {
        strukt: "task_struct",
        member: "fs",
        slot: |o| &mut o.task_fs,
    },
    Field {
        strukt: "task_struct",
        member: "files",
        slot: |o| &mut o.task_files,
    },
    Field {
        strukt: "fs_struct",
        member: "pwd",
        slot: |o| &mut o.fs_pwd,
    },
    Field {
        strukt: "files_struct",
        member: "fdt",
        slot: |o| &mut o.files_fdt,
    },
    Field {
        strukt: "fdtable",
        member: "fd",
        slot: |o| &mut o.fdtable_fd,
    },
    Field {
        strukt: "fdtable",
        member: "max_fds",
        slot: |o| &mut o.fdtable_max_fds,
    },
    Field {
        strukt: "file",
        member: "f_path",
        slot: |o| &mut o.file_f_path,
    },
    Field {
        strukt: "path",
        member: "mnt",
        slot: |o| &mut o.path_mnt,
    },
    Field {
        strukt: "path",
        member: "dentry",
        slot: |o| &mut o.path_dentry,
    },
    Field {
        strukt: "dentry",
        member: "d_parent",
        slot: |o| &mut o.dentry_d_parent,
    },
    Field {
        strukt: "dentry",
        member: "d_name",
        slot: |o| &mut o.dentry_d_name,
    },
    Field {
        strukt: "qstr",
        member: "len",
        slot: |o| &mut o.qstr_len,
    },
    Field {
        strukt: "qstr",
        member: "name",
        slot: |o| &mut o.qstr_name,
    },
    Field {
        strukt: "vfsmount",
        member: "mnt_root",
        slot: |o| &mut o.vfsmount_mnt_root,
    },
    Field {
        strukt: "mount",
        member: "mnt",
        slot: |o| &mut o.mount_mnt,
    },
    Field {
        strukt: "mount",
        member: "mnt_parent",
        slot: |o| &mut o.mount_mnt_parent,
    },
    Field {
        strukt: "mount",
        member: "mnt_mountpoint",
        slot: |o| &mut o.mount_mnt_mountpoint,
    },
    Field {
        strukt: "inode",
        member: "i_sb",
        slot: |o| &mut o.inode_i_sb,
    },
    Field {
        strukt: "super_block",
        member: "s_dev",
        slot: |o| &mut o.super_block_s_dev,
    },
    Field {
        strukt: "inode",
        member: "i_ino",
        slot: |o| &mut o.inode_i_ino,
    },
    Field {
        strukt: "inode",
        member: "i_dentry",
        slot: |o| &mut o.inode_i_dentry,
    },
    Field {
        strukt: "dentry",
        member: "d_u.d_alias",
        slot: |o| &mut o.dentry_d_alias,
    },
    Field {
        strukt: "dentry",
        member: "d_inode",
        slot: |o| &mut o.dentry_d_inode,
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

/// A field of a tracepoint record is missing from its tracefs format file, or is not where the
/// probes, which compile its offset in, read it.
#[derive(Debug, thiserror::Error)]
#[error("tracepoint {event}: field {field} in {path}: {}", misplaced(.found, .expected))]
pub struct FormatError {
    /// `category/name` of the tracepoint.
    pub event: String,
    /// Where the probes read it.
    pub expected: usize,
    /// Where the format file has it (`None`: not there).
    pub found: Option<u32>,
    /// The field looked for.
    pub field: String,
    /// The format file read.
    pub path: String,
}

/// Offset of `field` in a tracefs `format` text (`field:int __syscall_nr;\toffset:8;...`).
pub fn format_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let decl = line.trim().strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        let name = decl.rsplit([' ', '*']).next()?;
        if name != field {
            return None;
        }
        rest.split(';')
            .find_map(|part| part.trim().strip_prefix("offset:"))?
            .parse()
            .ok()
    })
}

fn misplaced(found: &Option<u32>, expected: &usize) -> String {
    match found {
        Some(at) => format!(
            "at offset {at}, but the probes read it at {expected}: this kernel lays out its \
             syscall records differently"
        ),
        None => "missing".to_owned(),
    }
}

/// Checks that the syscall records are laid out as the probes read them (`__syscall_nr`, the
/// first argument, `ret`), from the tracefs format files under `tracefs`.
pub fn check_syscall_format(tracefs: &str) -> Result<(), FormatError> {
    let check = |event: &str, field: &str, expected: usize| {
        let path = format!("{tracefs}/events/{event}/format");
        let found = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| format_offset(&text, field));
        if found == Some(expected as u32) {
            return Ok(());
        }
        Err(FormatError {
            event: event.to_owned(),
            expected,
            found,
            field: field.to_owned(),
            path,
        })
    };
    check(
        "syscalls/sys_enter_openat",
        "__syscall_nr",
        SYSCALL_NR_OFFSET,
    )?;
    check("syscalls/sys_enter_openat", "dfd", SYS_ENTER_ARGS_OFFSET)?;
    Ok(())
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
    fn tracefs_format_offsets() {
        let format = "name: sys_enter_openat\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:int dfd;\toffset:16;\tsize:8;\tsigned:0;\n\tfield:const char * filename;\toffset:24;\tsize:8;\tsigned:0;\n";
        assert_eq!(format_offset(format, "__syscall_nr"), Some(8));
        assert_eq!(format_offset(format, "dfd"), Some(16));
        assert_eq!(format_offset(format, "filename"), Some(24));
        assert_eq!(format_offset(format, "mode"), None);
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
