//! What this host runs twins as: `kvm` or `qemu` (TCG). Apart because the answer comes from
//! the host (`/dev/kvm`, CPU flags, loaded modules), not from libvirt, and the decision itself
//! is pure and tested on literal `/proc/cpuinfo` text.

use std::{fs, path::Path};

/// What this host runs twins as, and why: `kvm` only with hardware virtualisation (vmx/svm)
/// and kvm_intel or kvm_amd loaded. A host that is itself a VM may offer /dev/kvm through a
/// para-virtualised KVM (kvm_pvm) that runs only guests built for it, so /dev/kvm alone proves
/// nothing.
pub(super) fn detect_domain_type() -> (&'static str, String) {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    choose_domain_type(Path::new("/dev/kvm").exists(), &cpuinfo, |module| {
        Path::new("/sys/module").join(module).exists()
    })
}

fn choose_domain_type(
    dev_kvm: bool,
    cpuinfo: &str,
    loaded: impl Fn(&str) -> bool,
) -> (&'static str, String) {
    if !dev_kvm {
        return ("qemu", "no /dev/kvm".into());
    }
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_whitespace())
        .any(|f| f == "vmx" || f == "svm");
    let module = ["kvm_intel", "kvm_amd"].into_iter().find(|m| loaded(m));
    match (hw, module) {
        (true, Some(m)) => ("kvm", format!("/dev/kvm with vmx/svm and {m}")),
        _ => (
            "qemu",
            format!(
                "/dev/kvm present but {}{}: stock kernels cannot run under it",
                if hw {
                    "no kvm_intel/kvm_amd"
                } else {
                    "no vmx/svm in the CPU flags"
                },
                if loaded("kvm_pvm") {
                    ", kvm_pvm loaded"
                } else {
                    ""
                }
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_only_with_hardware_virtualisation_and_its_module() {
        let vmx = "processor\t: 0\nflags\t\t: fpu vme vmx sse\n";
        let plain = "processor\t: 0\nflags\t\t: fpu vme sse\n";
        let none = |_: &str| false;
        assert_eq!(choose_domain_type(false, vmx, |_| true).0, "qemu");
        assert_eq!(
            choose_domain_type(true, vmx, |m| m == "kvm_intel"),
            ("kvm", "/dev/kvm with vmx/svm and kvm_intel".into())
        );
        assert_eq!(choose_domain_type(true, vmx, none).0, "qemu");
        let (t, why) = choose_domain_type(true, plain, |m| m == "kvm_pvm");
        assert_eq!(t, "qemu");
        assert!(
            why.contains("no vmx/svm") && why.contains("kvm_pvm"),
            "{why}"
        );
    }
}
