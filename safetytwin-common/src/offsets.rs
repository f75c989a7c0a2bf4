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
    /// Keeps the struct a multiple of 8 bytes; always zero.
    pub _reserved: [u32; 2],
}

const _: () = assert!(core::mem::size_of::<Offsets>() == 64);

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], only u32 fields, no padding.
unsafe impl aya::Pod for Offsets {}
