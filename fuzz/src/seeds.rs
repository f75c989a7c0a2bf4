//! The seed inputs of each corpus, built from real values through the real encoders, so a
//! fuzz run starts from inputs that reach deep into each parser. `cargo test --lib -- --ignored
//! write_seeds` (re)writes them as `corpus/<target>/seed-*`; the fuzzer and `cargo fuzz cmin`
//! take it from there.

use std::{collections::BTreeSet, fs, path::Path};

use prost::Message;
use safetytwin_daemon::offsets::FIELDS;
use safetytwin_model::{
    Activity, Batch, BatchHeader, Content, DeltaBatch, FileDelta, FileKind, FileState, Group,
    GroupDelta, HostModel, OsRelease, Package, PackageDelta, PackageStatus, Password, Process,
    ProcessDelta, Unit, UnitDelta, UnitRuntime, User, UserDelta, units::unit_type_of,
};
use safetytwin_proto::{
    convert::{batch_to_wire, model_to_wire},
    spool::Spool,
};

fn state(kind: FileKind, mode: u32, content: Content, link: Option<&str>) -> FileState {
    FileState {
        kind,
        mode,
        uid: 0,
        gid: 0,
        size: match &content {
            Content::Text(t) => t.len() as u64,
            _ => 0,
        },
        sha256: matches!(content, Content::Text(_) | Content::Redacted).then(|| "ab".repeat(32)),
        content,
        link_target: link.map(str::to_owned),
    }
}

fn text(t: &str) -> FileState {
    state(FileKind::Regular, 0o644, Content::Text(t.to_owned()), None)
}

fn unit(name: &str, active: bool) -> Unit {
    Unit {
        name: name.to_owned(),
        unit_type: unit_type_of(name),
        runtime: Some(UnitRuntime {
            cgroup: format!("/system.slice/{name}"),
            cgroup_id: 42,
            active,
            main_pid: active.then_some(300),
        }),
        fragment_path: Some(format!("/etc/systemd/system/{name}")),
        dropins: vec![format!("/etc/systemd/system/{name}.d/override.conf")],
        enabled_by: BTreeSet::from([format!(
            "/etc/systemd/system/multi-user.target.wants/{name}"
        )]),
    }
}

fn process(pid: u32, exe: &str) -> Process {
    Process {
        pid,
        ppid: 1,
        uid: 0,
        gid: 0,
        comm: exe.rsplit('/').next().unwrap_or_default().to_owned(),
        exe: exe.to_owned(),
        argv: vec![exe.to_owned(), "--flag".to_owned()],
        cgroup_id: 42,
    }
}

/// A batch touching every kind of delta: files of each kind and content, a unit file and its
/// unit, processes in and out, a package upgraded and one purged, accounts added and removed.
fn batch() -> Batch {
    Batch {
        header: BatchHeader {
            host_id: "web-1".into(),
            boot_id: "6f1c0b1e-boot".into(),
            seq: 7,
            window_start_unix_ns: 1_700_000_000_000_000_000,
            window_end_unix_ns: 1_700_000_010_000_000_000,
            produced: 100,
            received: 99,
            dropped: 1,
            resync: false,
            more: false,
        },
        delta: DeltaBatch {
            files: vec![
                FileDelta::Upsert {
                    path: "/etc/nginx".into(),
                    state: state(FileKind::Directory, 0o755, Content::None, None),
                },
                FileDelta::Upsert {
                    path: "/etc/nginx/nginx.conf".into(),
                    state: text("worker_processes 2;\n"),
                },
                FileDelta::Upsert {
                    path: "/etc/systemd/system/app.service".into(),
                    state: text("[Service]\nExecStart=/usr/bin/app\n"),
                },
                FileDelta::Upsert {
                    path: "/etc/systemd/system/multi-user.target.wants/app.service".into(),
                    state: state(
                        FileKind::Symlink,
                        0o777,
                        Content::None,
                        Some("/etc/systemd/system/app.service"),
                    ),
                },
                FileDelta::Upsert {
                    path: "/etc/ssl/private/site.key".into(),
                    state: state(FileKind::Regular, 0o600, Content::Redacted, None),
                },
                FileDelta::Upsert {
                    path: "/etc/big.bin".into(),
                    state: state(FileKind::Regular, 0o644, Content::Binary, None),
                },
                FileDelta::Upsert {
                    path: "/etc/hostname".into(),
                    state: text("web-1\n"),
                },
                FileDelta::Remove {
                    path: "/etc/old.conf".into(),
                },
            ],
            units: vec![
                UnitDelta::Upsert(unit("app.service", true)),
                UnitDelta::Upsert(unit("old.service", false)),
                UnitDelta::Remove {
                    name: "gone.socket".into(),
                },
            ],
            processes: vec![
                ProcessDelta::Upsert(process(300, "/usr/bin/app")),
                ProcessDelta::Remove { pid: 250 },
            ],
            packages: vec![
                PackageDelta::Upsert(Package {
                    name: "nginx-common".into(),
                    arch: "all".into(),
                    version: "1.22.1-9+deb12u1".into(),
                    status: PackageStatus::ConfigFiles,
                }),
                PackageDelta::Remove {
                    name: "telnetd".into(),
                    arch: "amd64".into(),
                },
            ],
            users: vec![
                UserDelta::Upsert(User {
                    name: "app".into(),
                    uid: 998,
                    gid: 998,
                    gecos: "App,,,".into(),
                    home: "/var/lib/app".into(),
                    shell: "/usr/sbin/nologin".into(),
                    password: Password::Locked,
                }),
                UserDelta::Remove { name: "old".into() },
            ],
            groups: vec![
                GroupDelta::Upsert(Group {
                    name: "app".into(),
                    gid: 998,
                    members: vec!["www-data".into()],
                }),
                GroupDelta::Remove { name: "old".into() },
            ],
            os: Some(OsRelease {
                id: "debian".into(),
                version_id: "12".into(),
                codename: "bookworm".into(),
            }),
            activity: Activity {
                started: 5,
                exited: 4,
                short_lived: 3,
                changes: 12,
            },
        },
    }
}

fn model() -> HostModel {
    let mut m = HostModel::default();
    m.processes.insert(1, process(1, "/sbin/init"));
    m.processes.insert(300, process(300, "/usr/bin/app"));
    for delta in batch().delta.files {
        if let FileDelta::Upsert { path, state } = delta {
            m.files.insert(path, state);
        }
    }
    let app = unit("app.service", true);
    m.units.insert(app.name, app.runtime.expect("runtime"));
    m
}

/// A Debian host's files as the `host` target reads them: status, passwd, group and shadow
/// as chunks, then os-release.
fn host() -> Vec<u8> {
    let status = "Package: openssh-server\nStatus: install ok installed\nArchitecture: amd64\n\
                  Version: 1:9.2p1-2+deb12u3\nDescription: secure shell server\n a continuation\n\n\
                  Package: nginx-common\nStatus: deinstall ok config-files\nArchitecture: all\n\
                  Version: 1.22.1-9\n\nPackage: gone\nStatus: purge ok not-installed\n";
    let passwd = "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000:Alice,,,:/home/alice:/bin/bash\n\
                  svc:x:999:999::/nonexistent:\n";
    let group = "root:x:0:\nsudo:x:27:alice\nalice:x:1000:\n";
    let shadow = "root:$y$j9T$salt$hashhashhash:19000:0:99999:7:::\nalice:!$y$locked:19000::::::\n\
                  svc::19000::::::\n";
    let release = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n\
                   VERSION_CODENAME=bookworm\n";
    let mut out = Vec::new();
    for part in [status, passwd, group, shadow] {
        out.extend(chunk(part.as_bytes()));
    }
    out.extend_from_slice(release.as_bytes());
    out
}

fn chunk(bytes: &[u8]) -> Vec<u8> {
    let mut out = u16::try_from(bytes.len())
        .expect("seed chunk fits a u16")
        .to_le_bytes()
        .to_vec();
    out.extend_from_slice(bytes);
    out
}

/// One spooled record exactly as the spool frames it.
fn spooled(payload: &[u8]) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("safetytwin-seed-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let mut spool = Spool::open(&dir, 1 << 20).expect("spool");
    spool.push(payload).expect("push");
    let record = fs::read_dir(&dir)
        .expect("spool dir")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".batch"))
        .expect("a record");
    let bytes = fs::read(record.path()).expect("record");
    let _ = fs::remove_dir_all(&dir);
    bytes
}

const fn info(kind: u32, vlen: u32, kind_flag: bool) -> u32 {
    (kind << 24) | vlen | ((kind_flag as u32) << 31)
}

/// Little-endian BTF holding every struct member the daemon resolves, one `int` each at
/// successive offsets, plus an anonymous member through a typedef and a bitfield: the shapes
/// `btf.rs` handles, a few hundred bytes instead of the kernel's megabytes.
fn btf() -> Vec<u8> {
    let mut strings = b"\0int\0".to_vec();
    let mut name = |s: &str| {
        let off = strings.len() as u32;
        strings.extend_from_slice(s.as_bytes());
        strings.push(0);
        off
    };
    // [1] int
    let mut types = vec![1, info(1, 0, false), 4, 0x20];
    let mut structs: Vec<(&str, Vec<&str>)> = Vec::new();
    for f in FIELDS {
        match structs.iter_mut().find(|(s, _)| *s == f.strukt) {
            Some((_, members)) => members.push(f.member),
            None => structs.push((f.strukt, vec![f.member])),
        }
    }
    // A dotted member (`d_u.d_alias`) is a member whose type is an anonymous union holding
    // the rest; those unions follow the other types, from `nested_id` on.
    let nested_id = 2 + structs.len() as u32 + 4;
    let mut nested: Vec<&str> = Vec::new();
    for (strukt, members) in &structs {
        let s = name(strukt);
        types.extend([
            s,
            info(4, members.len() as u32, false),
            8 * members.len() as u32,
        ]);
        for (i, m) in members.iter().enumerate() {
            let ty = match m.split_once('.') {
                Some((head, tail)) => {
                    nested.push(tail);
                    types.push(name(head));
                    nested_id + nested.len() as u32 - 1
                }
                None => {
                    types.push(name(m));
                    1
                }
            };
            types.extend([ty, 64 * i as u32]);
        }
    }
    // Anonymous struct { int inner @32 }, typedef of it, struct outer { a; <anon>; flag:3 },
    // const int.
    let id = 2 + structs.len() as u32;
    let (inner, typedef, outer, a, flag) = (
        name("inner"),
        name("inner_t"),
        name("outer"),
        name("a"),
        name("flag"),
    );
    types.extend([0, info(4, 1, false), 8, inner, 1, 32]);
    types.extend([typedef, info(8, 0, false), id]);
    types.extend([outer, info(4, 3, true), 24, a, 1, 0, 0, id + 1, 64, flag, 1]);
    types.push((3 << 24) | 128);
    types.extend([0, info(10, 0, false), 1]);
    for tail in nested {
        let m = name(tail);
        types.extend([0, info(5, 1, false), 8, m, 1, 0]);
    }

    let type_bytes: Vec<u8> = types.iter().flat_map(|w| w.to_le_bytes()).collect();
    let mut out = vec![0x9f, 0xeb, 1, 0];
    for word in [
        24,
        0,
        type_bytes.len() as u32,
        type_bytes.len() as u32,
        strings.len() as u32,
    ] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    out.extend_from_slice(&type_bytes);
    out.extend_from_slice(&strings);
    out
}

/// Every seed, by target and name.
fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let batch_bytes = batch_to_wire(&batch()).encode_to_vec();
    let model_bytes = model_to_wire(&model()).encode_to_vec();
    let record = spooled(&batch_bytes);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let config =
        |name: &str| fs::read(root.join("packaging/config").join(name)).expect("packaging config");
    let switched_on = |name: &str| {
        let text = String::from_utf8(config(name)).expect("UTF-8");
        safetytwin_cli::defaults_switched_on(&text).into_bytes()
    };

    let mut spool_two = vec![0b011];
    spool_two.extend(chunk(b"3\n"));
    spool_two.extend(chunk(&record));
    spool_two.extend(&record);
    let mut spool_one = vec![0];
    spool_one.extend(&record);
    let mut plan = chunk(&batch_bytes);
    plan.extend(&model_bytes);

    vec![
        ("wire", "seed-batch", batch_bytes.clone()),
        ("wire", "seed-model", model_bytes.clone()),
        ("spool", "seed-one-record", spool_one),
        ("spool", "seed-acked-two-records", spool_two),
        ("btf", "seed-every-field", btf()),
        ("plan", "seed-batch-and-model", plan),
        ("config", "seed-daemon", config("daemon.toml")),
        ("config", "seed-daemon-defaults", switched_on("daemon.toml")),
        ("config", "seed-replayer", config("replayer.toml")),
        ("host", "seed-debian", host()),
    ]
}

#[test]
#[ignore = "rewrites the committed seeds"]
fn write_seeds() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, name, bytes) in seeds() {
        let dir = corpus.join(target);
        fs::create_dir_all(&dir).expect("corpus dir");
        fs::write(dir.join(name), bytes).expect("seed");
    }
}

/// The seeds reach past the first checks: each is accepted where a real input would be.
#[test]
fn seeds_are_valid_inputs() {
    let seeds = seeds();
    let get = |name: &str| &seeds.iter().find(|s| s.1 == name).expect("seed").2;
    let btf = safetytwin_daemon::btf::Btf::parse(get("seed-every-field")).expect("BTF parses");
    safetytwin_daemon::offsets::resolve(&btf, "seed").expect("every field resolves");
    assert_eq!(btf.member_offset("outer", "inner").expect("anonymous"), 12);
    let wire = safetytwin_proto::v1::DeltaBatch::decode(get("seed-batch").as_slice());
    safetytwin_proto::convert::batch_from_wire(wire.expect("decodes")).expect("converts");
    for (target, _, bytes) in &seeds {
        let run = match *target {
            "wire" => crate::wire,
            "spool" => crate::spool,
            "btf" => crate::btf,
            "plan" => crate::plan,
            "host" => crate::host,
            _ => crate::config,
        };
        run(bytes);
    }
}
