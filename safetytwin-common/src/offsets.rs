//! Kernel struct member offsets the probes need.
//!
//! Rust eBPF has no CO-RE field relocation, so the daemon resolves these from the running
//! kernel's BTF (`/sys/kernel/btf/vmlinux`) at load time and writes them into the programs'
//! [`OFFSETS_GLOBAL`]. No offset is ever written as a literal.

/// Name of the global the daemon overrides with the resolved [`Offsets`].
pub const OFFSETS_GLOBAL: &str = "OFFSETS";

/// Byte offsets of kernel struct members, each resolved from BTF by the path in its doc.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    /// `task_struct.pid`
    pub task_pid: u32,
    /// `task_struct.tgid`
    pub task_tgid: u32,
    /// `task_struct.real_parent`
    pub task_real_parent: u32,
    /// `task_struct.mm`
    pub task_mm: u32,
    /// `task_struct.exit_code`
    pub task_exit_code: u32,
    /// `task_struct.comm`
    pub task_comm: u32,
    /// `mm_struct.arg_start` (inside an anonymous struct on recent kernels)
    pub mm_arg_start: u32,
    /// `mm_struct.arg_end`
    pub mm_arg_end: u32,
    /// `linux_binprm.filename`
    pub binprm_filename: u32,
    /// `cgroup.root`
    pub cgroup_root: u32,
    /// `cgroup.level`
    pub cgroup_level: u32,
    /// `cgroup.kn`
    pub cgroup_kn: u32,
    /// `cgroup_root.hierarchy_id`
    pub cgroup_root_hierarchy_id: u32,
    /// `kernfs_node.id`
    pub kernfs_node_id: u32,
    /// `task_struct.fs`
    pub task_fs: u32,
    /// `task_struct.files`
    pub task_files: u32,
    /// `fs_struct.pwd`
    pub fs_pwd: u32,
    /// `files_struct.fdt`
    pub files_fdt: u32,
    /// `fdtable.fd`
    pub fdtable_fd: u32,
    /// `fdtable.max_fds`
    pub fdtable_max_fds: u32,
    /// `file.f_path` (inside an anonymous union on 6.x)
    pub file_f_path: u32,
    /// `path.mnt`
    pub path_mnt: u32,
    /// `path.dentry`
    pub path_dentry: u32,
    /// `dentry.d_parent`
    pub dentry_d_parent: u32,
    /// `dentry.d_name` (inside an anonymous union on 6.x)
    pub dentry_d_name: u32,
    /// `qstr.len`
    pub qstr_len: u32,
    /// `qstr.name`
    pub qstr_name: u32,
    /// `vfsmount.mnt_root`
    pub vfsmount_mnt_root: u32,
    /// `mount.mnt` (the embedded vfsmount)
    pub mount_mnt: u32,
    /// `mount.mnt_parent`
    pub mount_mnt_parent: u32,
    /// `mount.mnt_mountpoint`
    pub mount_mnt_mountpoint: u32,
    /// `inode.i_sb`
    pub inode_i_sb: u32,
    /// `super_block.s_dev`
    pub super_block_s_dev: u32,
    /// `inode.i_ino`
    pub inode_i_ino: u32,
    /// `inode.i_dentry` (inside an anonymous union on 6.x)
    pub inode_i_dentry: u32,
    /// `dentry.d_u.d_alias`: where a dentry hangs in its inode's `i_dentry` list
    pub dentry_d_alias: u32,
    /// `dentry.d_inode`
    pub dentry_d_inode: u32,
    /// Keeps the struct a multiple of 8 bytes; always zero.
    pub _reserved: u32,
}

const _: () = assert!(core::mem::size_of::<Offsets>() == 152);

/// Offset of `__syscall_nr` in `sys_enter_*` and `sys_exit_*` records. The syscall record
/// offsets are compiled in, not loaded: the verifier accepts only an immediate offset into a
/// tracepoint's record, and a direct load costs nothing where a helper call costs ~20 ns. The
/// daemon checks them against the kernel's format files before it loads anything.
pub const SYSCALL_NR_OFFSET: usize = 8;
/// Offset of the first argument in a `sys_enter_*` record (the others follow, 8 bytes each).
pub const SYS_ENTER_ARGS_OFFSET: usize = 16;

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], only u32 fields, no padding.
unsafe impl aya::Pod for Offsets {}
