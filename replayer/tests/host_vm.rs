//! A real systemd host (this machine's PID 1 is not systemd): a VM from the project's image with
//! a user-mode NIC, the daemon inside it (real probes, in the guest's kernel) streaming to a
//! replayer on this machine, which keeps that host's own twin. On the host VM: `apt-get
//! install` of a service package the image lacks, with its dependencies, then another version
//! (up or down, whichever the sources carry) of a package the image has, then the purge.
//! After each, `dpkg-query -W` agrees on every package between the host VM and the twin, the
//! service is active in the twin exactly when it is on the host, and `Verify` finds no
//! difference.
//!
//! Needs root, libvirt, the image and apt's sources reachable from the guest through the
//! user-mode network; without libvirt or the image it says why and passes.

#![cfg(feature = "libvirt")]

mod common;

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use common::{Running, vm};
use safetytwin_proto::v1::{self, twin_client::TwinClient};
use safetytwin_services::server::Security;
use safetytwin_twin::{
    applier::{Applier, ApplierConfig},
    pool::{AptDownload, Pool},
    vm::{
        TwinBackend,
        libvirt::{LibvirtBackend, LibvirtConfig},
    },
};

/// A service package the image lacks, with a dependency it lacks too.
const SERVICE: &str = "tftpd-hpa";
/// Where the daemon goes in the host VM, and its log.
const DAEMON: &str = "/usr/local/sbin/safetytwin-daemon";
const DAEMON_LOG: &str = "/var/log/safetytwin-daemon.log";

/// Runs `script` in `host`'s VM (or twin) and returns its trimmed stdout; `Err` with its
/// stderr when it fails.
fn sh(backend: &LibvirtBackend, host: &str, script: &str) -> Result<String, String> {
    let argv = ["/bin/sh", "-c", script].map(str::to_owned);
    match backend.exec(host, &argv, Duration::from_secs(900)) {
        Ok(out) if out.success() => Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned()),
        Ok(out) => Err(format!(
            "{script}: exit {}: {}{}",
            out.code,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
        Err(e) => Err(format!("{script}: {e}")),
    }
}

/// Every package with its version and state, one per line.
const PACKAGES: &str =
    "dpkg-query -W -f '${Package}:${Architecture} ${Version} ${db:Status-Status}\\n' | sort";

struct Vms<'a> {
    hosts: &'a LibvirtBackend,
    twins: &'a LibvirtBackend,
    /// The host VM's name in `hosts` (a domain name of its own).
    vm: &'a str,
    /// The host id, its twin's name in `twins`.
    host: &'a str,
}

impl Vms<'_> {
    fn host(&self, script: &str) -> String {
        sh(self.hosts, self.vm, script).unwrap_or_else(|e| panic!("host VM: {e}"))
    }

    fn twin(&self, script: &str) -> String {
        sh(self.twins, self.host, script).unwrap_or_else(|e| format!("({e})"))
    }

    /// Waits until `script` answers the same on the host VM and in the twin; the daemon's log
    /// tail on timeout.
    async fn agree(&self, what: &str, script: &str, limit: Duration) -> String {
        let t = Instant::now();
        loop {
            let (h, w) = (self.host(script), self.twin(script));
            if h == w {
                eprintln!("{what}: agree after {:.1} s", t.elapsed().as_secs_f64());
                return h;
            }
            if t.elapsed() > limit {
                let log = self.host(&format!("tail -n 30 {DAEMON_LOG}"));
                let diff: Vec<String> = h
                    .lines()
                    .filter(|l| !w.lines().any(|x| x == *l))
                    .map(|l| format!("host only: {l}"))
                    .chain(
                        w.lines()
                            .filter(|l| !h.lines().any(|x| x == *l))
                            .map(|l| format!("twin only: {l}")),
                    )
                    .take(20)
                    .collect();
                panic!(
                    "{what}: no agreement in {limit:?}:\n{}\ndaemon:\n{log}",
                    diff.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }
}

async fn verified(client: &mut TwinClient<tonic::transport::Channel>, host: &str) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let v = client
            .verify(v1::VerifyRequest {
                host_id: host.to_owned(),
            })
            .await
            .map(tonic::Response::into_inner);
        match v {
            Ok(v) if v.differences.is_empty() => {
                eprintln!(
                    "verify at seq {}: {} equal, 0 differences, by design {:?}",
                    v.seq,
                    v.equal,
                    v.by_design
                        .iter()
                        .map(|b| format!("{} {}", b.reason, b.count))
                        .collect::<Vec<_>>()
                );
                return;
            }
            other => assert!(Instant::now() < deadline, "verify: {other:?}"),
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn package_operations_on_a_systemd_host_reach_its_twin() {
    // 0755: libvirt's qemu user reaches the disks through it.
    let tmp = tempfile::Builder::new()
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .tempdir()
        .unwrap();
    let host_config = LibvirtConfig {
        state_dir: tmp.path().join("hosts"),
        user_network: true,
        ..LibvirtConfig::default()
    };
    if vm::skip(&host_config) {
        return;
    }
    let daemon_bin =
        Path::new(env!("CARGO_BIN_EXE_safetytwin-replayer")).with_file_name("safetytwin-daemon");
    assert!(daemon_bin.exists(), "{} is missing", daemon_bin.display());
    let host = format!("hostvm-{}", std::process::id());
    // Domains share one namespace: the host VM is named apart from its twin.
    let vm_name = format!("as-host-{}", std::process::id());
    let hosts = LibvirtBackend::open(host_config).unwrap();
    let _host_cleanup = vm::Cleanup {
        backend: &hosts,
        host: vm_name.clone(),
    };
    let twins = Arc::new(
        LibvirtBackend::open(LibvirtConfig {
            state_dir: tmp.path().join("twins"),
            ..LibvirtConfig::default()
        })
        .unwrap(),
    );
    let _twin_cleanup = vm::Cleanup {
        backend: &twins,
        host: host.clone(),
    };
    let pool = Pool::open(tmp.path().join("pool"), Box::new(AptDownload)).unwrap();
    let dyn_twins: Arc<dyn TwinBackend> = twins.clone();
    let running = Running::start_full("host-vm", 64 << 20, Security::Insecure, |store| {
        Applier::new(store, dyn_twins, ApplierConfig::default()).with_pool(pool)
    })
    .await;
    let mut client = TwinClient::connect(format!("http://{}", running.addr))
        .await
        .unwrap();
    let vms = Vms {
        hosts: &hosts,
        twins: &twins,
        vm: &vm_name,
        host: &host,
    };

    // The host VM: booted, on the user-mode network (this machine's loopback is 10.0.2.2),
    // the daemon inside.
    let t = Instant::now();
    hosts.ensure(&vm_name).unwrap();
    vms.host(
        "set -e; dev=$(ls /sys/class/net | grep -v '^lo$' | head -n 1); ip link set \"$dev\" up; \
         ip addr add 10.0.2.15/24 dev \"$dev\"; ip route add default via 10.0.2.2; \
         echo 'nameserver 10.0.2.3' > /etc/resolv.conf",
    );
    eprintln!("host VM up in {:.1} s", t.elapsed().as_secs_f64());
    // Without its debug info the binary crosses the agent in seconds.
    let stripped = tmp.path().join("safetytwin-daemon");
    let status = std::process::Command::new("objcopy")
        .arg("--strip-debug")
        .arg(&daemon_bin)
        .arg(&stripped)
        .status()
        .expect("objcopy (binutils)");
    assert!(status.success());
    hosts
        .write_file(&vm_name, DAEMON, &std::fs::read(&stripped).unwrap())
        .unwrap();
    vms.host(&format!(
        "chmod 0755 {DAEMON}; setsid {DAEMON} -v run --insecure --interval 2 \
         --watch /etc --replayer http://10.0.2.2:{port} --host-id {host} \
         --spool /var/lib/safetytwin-spool </dev/null >{DAEMON_LOG} 2>&1 &",
        port = running.addr.port()
    ));

    // The first state: the twin, from the same image, agrees on every package at once.
    let t = Instant::now();
    vms.agree("packages at the start", PACKAGES, Duration::from_secs(600))
        .await;
    eprintln!(
        "twin of the host VM ready in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    verified(&mut client, &host).await;

    // Install, with dependencies, from the mirror through the user-mode network.
    let t = Instant::now();
    vms.host(&format!(
        "apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
         --no-install-recommends {SERVICE} >/dev/null"
    ));
    eprintln!(
        "host VM: {SERVICE} installed in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(
        vms.host(&format!("systemctl is-active {SERVICE}")),
        "active"
    );
    let t = Instant::now();
    let packages = vms
        .agree(
            "packages after the install",
            PACKAGES,
            Duration::from_secs(600),
        )
        .await;
    assert!(
        packages
            .lines()
            .any(|l| l.starts_with(&format!("{SERVICE}:"))),
        "{packages}"
    );
    vms.agree(
        "the service",
        &format!("systemctl is-active {SERVICE}; true"),
        Duration::from_secs(120),
    )
    .await;
    eprintln!(
        "install in the twin after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    verified(&mut client, &host).await;

    // Another version of a package the image has: the point-release and security suites
    // carry other versions of tzdata than the image's (bookworm main only).
    vms.host(
        "printf 'deb http://deb.debian.org/debian bookworm-updates main\n\
         deb http://deb.debian.org/debian-security bookworm-security main\n' \
         > /etc/apt/sources.list.d/safetytwin-test.list && apt-get update -q >/dev/null",
    );
    let before = vms.host("dpkg-query -W -f '${Version}' tzdata");
    let other = vms
        .host("apt-cache madison tzdata | awk -F'|' '{gsub(/ /, \"\", $2); print $2}' | sort -u");
    let other = other
        .lines()
        .find(|v| *v != before)
        .unwrap_or_else(|| panic!("no other tzdata than {before} in the sources"))
        .to_owned();
    vms.host(&format!(
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --allow-downgrades \
         tzdata={other} >/dev/null"
    ));
    let t = Instant::now();
    let packages = vms
        .agree(
            &format!("packages after tzdata {before} -> {other}"),
            PACKAGES,
            Duration::from_secs(600),
        )
        .await;
    assert!(
        packages.contains(&format!("tzdata:all {other} installed")),
        "{packages}"
    );
    eprintln!(
        "tzdata {before} -> {other} in the twin after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    verified(&mut client, &host).await;

    // Purge: gone from both, the service with it.
    vms.host(&format!(
        "DEBIAN_FRONTEND=noninteractive apt-get purge -y -q {SERVICE} >/dev/null"
    ));
    let t = Instant::now();
    vms.agree(
        "packages after the purge",
        PACKAGES,
        Duration::from_secs(600),
    )
    .await;
    let state = vms
        .agree(
            "the service after the purge",
            &format!("systemctl is-active {SERVICE}; true"),
            Duration::from_secs(120),
        )
        .await;
    assert_eq!(state, "inactive");
    eprintln!("purge in the twin after {:.1} s", t.elapsed().as_secs_f64());
    verified(&mut client, &host).await;

    // The daemon holds its stream open: it goes first, or the replayer waits for it.
    vms.host("kill -INT $(pidof safetytwin-daemon) 2>/dev/null; sleep 2; true");
    drop(client);
    running.stop().await;
}
