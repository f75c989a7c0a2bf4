//! `cargo xtask`: set-up, builds and tests that need more than `cargo` alone.
//!
//! The eBPF object is built by Debian's rustc 1.96 (which ships a precompiled `core` for
//! `bpfel-unknown-none`) with bpf-linker; everything else by the rustup toolchain. `setup`
//! installs both idempotently, so every command here works on a fresh machine.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod bench_daemon;
mod capacity;
mod edge;
mod fuzz;
mod image;
mod install;
mod load;
mod overhead;
mod polling;
mod postgres;
mod twin;
mod twin_packages;
mod up;

#[derive(Debug, Parser)]
#[command(about = "safetytwin build, set-up and test tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install the eBPF toolchain and test tools (Debian packages, bpf-linker); idempotent.
    Setup,
    /// Build the eBPF object into target/ebpf.
    BuildEbpf,
    /// Set up, build everything and run the whole test suite (privileged tests need root), then
    /// replay the fuzz corpora (and fuzz each target briefly where cargo-fuzz is installed).
    Test,
    /// rustfmt and clippy, both as errors, and prost used only in safetytwin-proto.
    Lint,
    /// Run the fuzz targets (coverage-guided, cargo-fuzz on the stable toolchain, installed if
    /// missing), each from its committed corpus in fuzz/corpus/; a crash stops with its input
    /// in fuzz/artifacts/.
    Fuzz {
        /// Only this target (repeatable): wire, spool, btf, plan, config.
        #[arg(long = "target", value_name = "T")]
        targets: Vec<String>,
        /// How long each target runs (0: not at all, e.g. to only --minimize).
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Then replace each corpus by the fewest inputs of it and of what the runs found
        /// (fuzz/target/found/) that cover the same code; commit the result.
        #[arg(long)]
        minimize: bool,
    },
    /// Measure what tracing costs workloads (root; loads the real probes) and write
    /// benches/RESULTS.md.
    BenchOverhead {
        /// A/B pairs per workload.
        #[arg(long, default_value_t = 5)]
        pairs: usize,
        /// Run one part only (the other sections of RESULTS.md are kept).
        #[arg(long, value_enum)]
        only: Option<overhead::Part>,
    },
    /// The controller's capacity: replayers on the embedded store or on a throw-away
    /// PostgreSQL, driven by simulated daemons on the real protocol; prints batches/s, ack
    /// latency, CPU and store growth per batch. `--sweep` runs every layout (redb; PostgreSQL
    /// with 1, 2, 3 replayers) with more and more hosts and writes benches/RESULTS.md.
    Load {
        /// Simulated hosts (with --sweep: the first step).
        #[arg(long, default_value_t = 1000)]
        hosts: usize,
        /// Seconds between one host's batches.
        #[arg(long, default_value_t = 10.0)]
        interval: f64,
        /// Files changed per batch.
        #[arg(long, default_value_t = 5)]
        changes: usize,
        /// Seconds each run sends.
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
        /// The history store.
        #[arg(long, value_enum, default_value_t = load::StoreKind::Redb)]
        store: load::StoreKind,
        /// Replayers sharing the store (PostgreSQL only beyond one).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=8))]
        replayers: u64,
        /// Every layout, hosts doubling from --hosts until one no longer keeps up (at most
        /// five steps); rewrites the capacity section of benches/RESULTS.md.
        #[arg(long)]
        sweep: bool,
    },
    /// Make a local CA, a replayer certificate, one daemon certificate per host id and a
    /// consumer token (for tests and demos) in DIR (`safetytwin-replayer gen-certs`).
    GenCerts {
        /// Where to write them.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// More names the replayer certificate is valid for (localhost and loopback always).
        #[arg(long = "name", value_name = "DNS_OR_IP")]
        names: Vec<String>,
        /// A host id to issue a daemon certificate for; repeatable (default: this machine's).
        #[arg(long = "host", value_name = "ID")]
        hosts: Vec<String>,
    },
    /// Install QEMU, libvirt (bookworm-backports) and debootstrap, and start libvirt; idempotent.
    SetupTwin,
    /// Build the release binaries and install them, the systemd units, their configuration
    /// files in /etc/safetytwin (existing ones are kept) and /var/lib/safetytwin; idempotent.
    Install {
        /// Binaries go to PREFIX/bin (the units are pointed there).
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
        /// Only print what would be installed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Build the twin's guest image (Debian bookworm, direct kernel boot), or reuse the cached one.
    BuildImage {
        /// Image cache; one subdirectory per input hash, `latest` points at the newest.
        #[arg(long, default_value = image::DEFAULT_OUT)]
        out: PathBuf,
        /// Rebuild even when an image with the same input hash exists.
        #[arg(long)]
        force: bool,
        /// The Debian release (codename) of the twin: the monitored hosts' own. The image is
        /// also linked as `latest-<release>`, for `serve --twin-image`.
        #[arg(long, default_value = image::DEFAULT_RELEASE, value_name = "NAME")]
        release: String,
    },
    /// Boot a throw-away twin from the image under libvirt and exercise its guest agent.
    CheckTwin {
        /// Domain type: `kvm` or `qemu` (TCG); default: kvm only where KVM can run a stock kernel.
        #[arg(long)]
        domain_type: Option<String>,
    },
    /// The main job, as root: set up and build what is missing, start the replayer (history
    /// and libvirt twin) and the daemon, wait until the twin holds this host's state, then keep
    /// it in step until Ctrl-C.
    Up {
        /// The replayer's gRPC address (loopback: plaintext, no tokens).
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: String,
        /// The dashboard, JSON API and metrics (loopback: plaintext, no tokens).
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: String,
        /// History store, spool and logs.
        #[arg(long, default_value = "/var/lib/safetytwin")]
        data: PathBuf,
        /// Twin backend: libvirt, or none (history only, no VM).
        #[arg(long, default_value = "libvirt", value_parser = ["libvirt", "none"])]
        twin: String,
        /// Seconds between the daemon's batches.
        #[arg(long, default_value_t = 10)]
        interval: u64,
        /// Minutes to wait for the twin's first full state (boot + first apply).
        #[arg(long, default_value_t = 15)]
        first_sync_minutes: u64,
    },
}

/// Debian packages: rustc/cargo 1.96 with the BPF `core`, LLVM 22 for bpf-linker, and bpftool
/// (the independent BTF reader the offset test compares against).
const APT_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "bpftool",
];
/// Headless Chromium and its WebDriver, for the dashboard's browser test
/// (`replayer/tests/dashboard.rs`).
const BROWSER_PACKAGES: &[&str] = &["chromium", "chromium-driver"];
/// The release build of both binaries (`up`, `install`).
const RELEASE_BUILD: [&str; 6] = [
    "build",
    "--release",
    "-p",
    "safetytwin-daemon",
    "-p",
    "safetytwin-replayer",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Task::Setup => {
            setup()?;
            setup_test_tools()
        }
        Task::BuildEbpf => build_ebpf(),
        Task::BenchOverhead { pairs, only } => {
            setup()?;
            build_ebpf()?;
            step("cargo build --release (daemon)", || {
                cargo(&["build", "--release", "-p", "safetytwin-daemon"])
            })?;
            overhead::run(
                &root().join("target/release/safetytwin-daemon"),
                pairs.max(1),
                only,
                &root().join("benches/RESULTS.md"),
            )
        }
        Task::Load {
            hosts,
            interval,
            changes,
            seconds,
            store,
            replayers,
            sweep,
        } => {
            if hosts == 0 || interval <= 0.0 || seconds < 2.0 * interval {
                bail!(
                    "--hosts and --interval must be above zero, --seconds at least twice --interval"
                );
            }
            step("cargo build --release (replayer, load generator)", || {
                cargo(&[
                    "build",
                    "--release",
                    "-p",
                    "safetytwin-replayer",
                    "-p",
                    "safetytwin-benches",
                    "--bin",
                    "safetytwin-replayer",
                    "--bin",
                    "load",
                ])
            })?;
            let bins = load::Bins {
                replayer: root().join("target/release/safetytwin-replayer"),
                load: root().join("target/release/load"),
            };
            let base = load::Load {
                hosts,
                interval,
                changes,
                seconds,
            };
            if sweep {
                let steps: Vec<usize> = (0..5).map(|i| hosts << i).collect();
                load::sweep(&bins, base, &steps, &root().join("benches/RESULTS.md"))
            } else {
                load::once(&bins, store, replayers as usize, base)
            }
        }
        Task::GenCerts { dir, names, hosts } => {
            let dir = std::env::current_dir()?.join(dir);
            let dir = dir.to_str().context("certificate directory is not UTF-8")?;
            let mut args = vec![
                "run",
                "--quiet",
                "-p",
                "safetytwin-replayer",
                "--",
                "gen-certs",
                "--dir",
                dir,
            ];
            // The replayer checks them and picks the default host id: one parser, one default.
            for n in &names {
                args.extend(["--name", n]);
            }
            for h in &hosts {
                args.extend(["--host", h]);
            }
            cargo(&args)
        }
        Task::SetupTwin => twin::setup(),
        Task::Install { prefix, dry_run } => install::run(&root(), &prefix, dry_run, || {
            setup()?;
            // The replayer links libvirt (its default twin backend).
            twin_packages::install()?;
            build_ebpf()?;
            step("cargo build --release (daemon, replayer)", || {
                cargo(&RELEASE_BUILD)
            })
        }),
        Task::BuildImage {
            out,
            force,
            release,
        } => {
            let out = std::env::current_dir()?.join(out);
            image::build(&out, force, &release).map(|_| ())
        }
        Task::CheckTwin { domain_type } => twin::check(domain_type.as_deref()),
        Task::Test => {
            setup()?;
            setup_test_tools()?;
            // The twin tests boot a real VM: libvirt running and the image built (cached).
            let root_user = is_root();
            if root_user {
                twin::setup()?;
                image::build(Path::new(image::DEFAULT_OUT), false, image::DEFAULT_RELEASE)?;
            } else {
                eprintln!("    not root: the privileged eBPF and twin tests will skip");
            }
            build_ebpf()?;
            // The store suite and the scale-out tests run on PostgreSQL too.
            let pg = postgres::Cluster::start()?;
            step("cargo test --workspace", || {
                test_workspace(root_user, &pg.url)
            })?;
            drop(pg);
            fuzz::replay()?;
            if fuzz::installed() {
                fuzz::run(&[], fuzz::TEST_SECONDS, false)
            } else {
                eprintln!(
                    "    cargo-fuzz not installed (`cargo xtask fuzz` installs it): corpora replayed only"
                );
                Ok(())
            }
        }
        Task::Fuzz {
            targets,
            seconds,
            minimize,
        } => {
            fuzz::install()?;
            fuzz::run(&targets, seconds, minimize)
        }
        Task::Lint => {
            // The replayer's default features link libvirt.
            twin_packages::install()?;
            step("prost only in safetytwin-proto", || edge::check(&root()))?;
            step("cargo fmt --check", || cargo(&["fmt", "--all", "--check"]))?;
            step("cargo clippy", || {
                cargo(&[
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ])
            })?;
            step("cargo fmt --check (eBPF)", || {
                run_cmd(
                    Command::new("cargo")
                        .args(["fmt", "--check"])
                        .current_dir(root().join("safetytwin-ebpf")),
                )
            })
        }
        Task::Up {
            listen,
            http,
            data,
            twin,
            interval,
            first_sync_minutes,
        } => {
            setup()?;
            if twin == "libvirt" {
                twin::setup()?;
                image::build(Path::new(image::DEFAULT_OUT), false, image::DEFAULT_RELEASE)?;
            }
            build_ebpf()?;
            step("cargo build --release (daemon, replayer)", || {
                cargo(&RELEASE_BUILD)
            })?;
            up::run(
                &root(),
                &up::Up {
                    listen,
                    http,
                    data,
                    twin,
                    interval,
                    first_sync_timeout: Duration::from_secs(first_sync_minutes * 60),
                },
            )
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_owned()
}

fn step(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    eprintln!("==> {name}");
    let start = Instant::now();
    f().with_context(|| format!("step `{name}` failed"))?;
    eprintln!("    {name}: done in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}

fn run_cmd(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{:?} exited with {status}", cmd.get_program());
    }
    Ok(())
}

fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run_cmd(Command::new(cargo).args(args).current_dir(root()))
}

/// Runs the workspace tests, passing their output through, and closes with one line that sums
/// every test binary's result (cargo's own last line is often an empty binary's `0 passed`).
/// `cargo test --workspace`; with `as_root` (everything the privileged and twin tests need
/// was set up), a privileged or twin test that cannot run fails instead of skipping. The
/// PostgreSQL at `postgres` (a superuser URL) serves the store suite's second engine; a test
/// that needs it, or the browser `setup` installs, fails rather than skips.
fn test_workspace(as_root: bool, postgres: &str) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .env("SAFETYTWIN_TEST_POSTGRES", postgres)
        .env("SAFETYTWIN_POSTGRES_REQUIRED", "1")
        // `setup` installed the browser: the dashboard test runs.
        .env("SAFETYTWIN_BROWSER_REQUIRED", "1");
    if as_root {
        command
            .env("SAFETYTWIN_TWIN_REQUIRED", "1")
            .env("SAFETYTWIN_PRIVILEGED_REQUIRED", "1");
    }
    let mut child = command
        .args(["test", "--workspace", "--all-targets"])
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot run cargo test")?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |what: &str| {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .strip_suffix(what)?
                            .trim()
                            .rsplit(' ')
                            .next()?
                            .parse()
                            .ok()
                    })
                    .unwrap_or(0u64)
            };
            passed += count("passed");
            failed += count("failed");
            ignored += count("ignored");
        }
    }
    let status = child.wait()?;
    println!("tests: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("cargo test exited with {status}");
    }
    Ok(())
}

fn cargo_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

/// The packages of `wanted` that dpkg does not list as installed.
fn missing_packages(wanted: &[&'static str]) -> Vec<&'static str> {
    wanted
        .iter()
        .copied()
        .filter(|pkg| {
            let out = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", pkg])
                .output();
            !matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect()
}

/// Runs an apt-get command, waiting while another apt holds the dpkg lock.
fn apt_get(args: &[&str]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let out = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .context("cannot run apt-get (is this Debian?)")?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("Could not get lock") && Instant::now() < deadline {
            eprintln!("    apt lock held by another process; retrying in 5 s");
            std::thread::sleep(Duration::from_secs(5));
            continue;
        }
        bail!("apt-get {} failed:\n{stderr}", args.join(" "));
    }
}

/// Installs those of `packages` that are not installed yet (idempotent).
pub(crate) fn ensure_packages(packages: &[&'static str]) -> Result<()> {
    let missing = missing_packages(packages);
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!("apt-get install {}", missing.join(" ")), || {
        if !is_root() {
            bail!("installing Debian packages needs root; run as root or install: {missing:?}");
        }
        apt_get(&["update", "-q"])?;
        let mut args = vec!["install", "-y", "-q"];
        args.extend(&missing);
        apt_get(&args)
    })
}

/// What the tests need beyond the build: PostgreSQL for the store suite and the scale-out
/// tests, Chromium for the dashboard's. Not part of [`setup`], which `up` and `install` run too:
/// a monitored host or a controller on the embedded store needs neither.
fn setup_test_tools() -> Result<()> {
    ensure_packages(postgres::PACKAGES)?;
    ensure_packages(BROWSER_PACKAGES)
}

/// What building needs: the eBPF toolchain and bpftool.
fn setup() -> Result<()> {
    ensure_packages(APT_PACKAGES)?;
    let linker = cargo_bin().join("bpf-linker");
    let have = Command::new(&linker)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
        .unwrap_or(false);
    if !have {
        step(
            &format!("cargo install bpf-linker {BPF_LINKER_VERSION} (about 90 s)"),
            || {
                run_cmd(
                    Command::new("cargo")
                        .args([
                            "install",
                            "--locked",
                            "bpf-linker",
                            "--version",
                            BPF_LINKER_VERSION,
                            "--no-default-features",
                            "--features",
                            "llvm-22",
                        ])
                        .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
                )
            },
        )?;
    }
    Ok(())
}

/// Whether xtask runs as root (the privileged set-up and tests need it).
/// Fails unless running as root, naming `what` needs it.
fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!("{what} needs root");
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn build_ebpf() -> Result<()> {
    step(
        "build eBPF object (Debian rustc, bpfel-unknown-none)",
        || {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut paths = vec![cargo_bin()];
            paths.extend(std::env::split_paths(&path));
            let mut cmd = Command::new(DEBIAN_CARGO);
            cmd.args(["build", "--release"])
                .current_dir(root().join("safetytwin-ebpf"))
                .env("PATH", std::env::join_paths(paths)?)
                .env("RUSTC", DEBIAN_RUSTC)
                // aya-ebpf uses one unstable feature (`asm!` on BPF); Debian's rustc is a stable
                // release.
                .env("RUSTC_BOOTSTRAP", "aya_ebpf")
                .env("CARGO_TARGET_DIR", root().join("target/ebpf"));
            // The rustup toolchain's settings must not leak into Debian's cargo.
            for var in [
                "RUSTUP_TOOLCHAIN",
                "RUSTFLAGS",
                "CARGO_ENCODED_RUSTFLAGS",
                "RUSTC_WRAPPER",
                "RUSTC_WORKSPACE_WRAPPER",
                "CARGO_BUILD_TARGET",
                "CARGO",
                "RUSTDOC",
            ] {
                cmd.env_remove(var);
            }
            run_cmd(&mut cmd)?;
            let object = ebpf_object();
            let size = std::fs::metadata(&object)
                .with_context(|| format!("{} was not produced", object.display()))?
                .len();
            eprintln!("    {} ({size} bytes)", object.display());
            Ok(())
        },
    )
}

fn ebpf_object() -> PathBuf {
    root().join("target/ebpf/bpfel-unknown-none/release/safetytwin-ebpf")
}
