//! The replayer's command line refuses unsafe or incomplete configurations with one clear line
//! and a non-zero exit, never a backtrace.

use std::process::Command;

fn serve(args: &[&str]) -> (Option<i32>, String) {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_safetytwin-replayer"))
        .args(["serve", "--twin", "none"])
        .args(args)
        .arg("--data")
        .arg(tmp.path().join("data"))
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn plaintext_only_on_loopback_and_tls_needs_every_file() {
    let (code, err) = serve(&["--insecure", "--listen", "0.0.0.0:0"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("only on a loopback address"), "{err}");
    assert!(!err.contains("panicked"));

    let (code, err) = serve(&["--listen", "127.0.0.1:0"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--tls-cert") && err.contains("--token-file"),
        "{err}"
    );

    let (code, err) = serve(&[
        "--tls-cert",
        "/nonexistent.pem",
        "--tls-key",
        "/x",
        "--client-ca",
        "/x",
        "--token-file",
        "/x",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot read /"), "{err}");
}

/// Runs a client subcommand against `addr`; (exit code, stdout, stderr).
fn client(addr: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_safetytwin-replayer"))
        .args(args)
        .args(["--replayer", &format!("http://{addr}")])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_read_the_history_and_fail_clearly() {
    let running = common::Running::start("cli-client", 64 << 20).await;
    let (mut stream, _) = common::Stream::open(running.addr, "web-1").await;
    for (seq, text) in [(1, "v=1\n"), (2, "v=2\n"), (3, "v=3\n")] {
        stream
            .send(common::batch("web-1", seq, text))
            .await
            .unwrap();
    }
    let addr = running.addr.to_string();
    let run = move |args: Vec<&str>| {
        let (addr, args): (String, Vec<String>) =
            (addr.clone(), args.into_iter().map(str::to_owned).collect());
        tokio::task::spawn_blocking(move || {
            client(&addr, &args.iter().map(String::as_str).collect::<Vec<_>>())
        })
    };

    let (code, out, err) = run(vec!["status"]).await.unwrap();
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("1 hosts, 3 batches, twin backend: none"),
        "{out}"
    );

    let (code, out, _) = run(vec!["hosts", "--json"]).await.unwrap();
    assert_eq!(code, Some(0));
    let host: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (host["host"].as_str(), host["last_seq"].as_u64()),
        (Some("web-1"), Some(3))
    );

    // The only host is the default; diff and state read the history.
    let (code, out, _) = run(vec!["diff", "1", "3", "--json"]).await.unwrap();
    assert_eq!(code, Some(0));
    let diff: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(diff["files"][0]["path"], "/etc/app.conf");
    assert_eq!(diff["files"][0]["content"], "v=3\n");
    let (code, out, _) = run(vec!["state", "--at", "2", "--json"]).await.unwrap();
    assert_eq!(code, Some(0));
    let state: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (state["seq"].as_u64(), &state["files"][0]["content"]),
        (Some(2), &"v=2\n".into())
    );

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("export");
    let dir_arg = dir.to_string_lossy().into_owned();
    let (code, out, err) = run(vec!["export", "1", &dir_arg]).await.unwrap();
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("1 files"), "{out}");
    assert_eq!(
        std::fs::read_to_string(dir.join("files/etc/app.conf")).unwrap(),
        "v=1\n"
    );
    assert!(dir.join("manifest.json").exists());

    // Clear failures with distinct exit codes, never a backtrace.
    let (code, _, err) = run(vec!["state", "--host", "nope"]).await.unwrap();
    assert_eq!(code, Some(4), "{err}");
    let (code, _, err) = run(vec!["snapshots"]).await.unwrap();
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("without a twin"), "{err}");
    let (code, _, err) = run(vec!["verify"]).await.unwrap();
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("without a twin"), "{err}");
    let (code, _, err) = run(vec!["diff", "3", "1"]).await.unwrap();
    assert_eq!(code, Some(1));
    assert!(err.contains("after") && !err.contains("panicked"), "{err}");
    drop(stream);
    running.stop().await;
    let (code, _, err) = tokio::task::spawn_blocking(move || client("127.0.0.1:1", &["status"]))
        .await
        .unwrap();
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("cannot reach the replayer"), "{err}");
}

/// Packages and accounts travel like files: `diff` shows an upgrade, a purge and a new user,
/// `state` lists them (a password's state, never a hash), `export` writes them to the manifest.
#[tokio::test]
async fn packages_and_accounts_show_in_diff_state_and_export() {
    use safetytwin_model::{
        DeltaBatch, Group, GroupDelta, PackageDelta, Password, User, UserDelta, fixtures,
    };
    let running = common::Running::start("cli-packages", 64 << 20).await;
    let (mut stream, _) = common::Stream::open(running.addr, "pkg-1").await;
    let package =
        |name: &str, version: &str| PackageDelta::Upsert(fixtures::package(name, version));
    let user = |name: &str, uid: u32, password: Password| {
        UserDelta::Upsert(User {
            name: name.into(),
            uid,
            gid: uid,
            gecos: String::new(),
            home: format!("/home/{name}"),
            shell: "/bin/bash".into(),
            password,
        })
    };
    let batch = |seq: u64, delta: DeltaBatch| {
        safetytwin_proto::convert::batch_to_wire(&fixtures::batch("pkg-1", seq, delta))
    };
    let first = DeltaBatch {
        packages: vec![package("curl", "7.88.1-10"), package("nginx", "1.22.1-9")],
        users: vec![user("alice", 1000, Password::Locked)],
        groups: vec![GroupDelta::Upsert(Group {
            name: "sudo".into(),
            gid: 27,
            members: vec!["alice".into()],
        })],
        ..DeltaBatch::default()
    };
    let second = DeltaBatch {
        packages: vec![
            package("curl", "7.88.1-10+deb12u5"),
            PackageDelta::Remove {
                name: "nginx".into(),
                arch: "amd64".into(),
            },
        ],
        users: vec![user("bob", 1001, Password::Set)],
        ..DeltaBatch::default()
    };
    stream.send(batch(1, first)).await.unwrap();
    stream.send(batch(2, second)).await.unwrap();
    let addr = running.addr.to_string();
    let run = move |args: &[&str]| {
        let (addr, args): (String, Vec<String>) =
            (addr.clone(), args.iter().map(|a| a.to_string()).collect());
        tokio::task::spawn_blocking(move || {
            client(&addr, &args.iter().map(String::as_str).collect::<Vec<_>>())
        })
    };

    let (code, out, err) = run(&["diff", "1", "2", "--json"]).await.unwrap();
    assert_eq!(code, Some(0), "{err}");
    let diff: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        diff["packages"],
        serde_json::json!([
            {"op": "upsert", "package": "curl", "arch": "amd64",
             "version": "7.88.1-10+deb12u5", "status": "installed"},
            {"op": "remove", "package": "nginx", "arch": "amd64"},
        ])
    );
    assert_eq!(diff["users"][0]["user"], "bob");
    assert_eq!(diff["users"][0]["password"], "set");

    let (code, out, err) = run(&["state", "--at", "1"]).await.unwrap();
    assert_eq!(code, Some(0), "{err}");
    for line in [
        "2 packages, 1 users, 1 groups",
        "  package curl:amd64 7.88.1-10 installed",
        "  package nginx:amd64 1.22.1-9 installed",
        "  user alice 1000:1000 /home/alice /bin/bash password locked",
        "  group sudo 27 alice",
    ] {
        assert!(out.contains(line), "{line:?} in\n{out}");
    }

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("export");
    let dir_arg = dir.to_string_lossy().into_owned();
    let (code, _, err) = run(&["export", "2", &dir_arg]).await.unwrap();
    assert_eq!(code, Some(0), "{err}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["packages"].as_array().unwrap().len(), 1);
    assert_eq!(manifest["packages"][0]["version"], "7.88.1-10+deb12u5");
    assert_eq!(manifest["users"].as_array().unwrap().len(), 2);
}

/// `serve --config FILE --help`: parses the file (and stops before serving).
fn serve_help(config: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replayer.toml");
    std::fs::write(&path, config).unwrap();
    Command::new(env!("CARGO_BIN_EXE_safetytwin-replayer"))
        .args(["serve", "--config"])
        .arg(&path)
        .arg("--help")
        .output()
        .unwrap()
}

#[test]
fn shipped_config_and_its_defaults_parse_and_bad_values_are_named() {
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/config/replayer.toml"
    ))
    .unwrap();
    let out = serve_help(&shipped);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The documented defaults must be valid settings too.
    let defaults = safetytwin_cli::defaults_switched_on(&shipped);
    let out = serve_help(&defaults);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = serve_help("max-snapshots = 0\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("key `max-snapshots`") && err.contains("1..=1000"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_new_changes_as_they_are_stored() {
    let running = common::Running::start("cli-watch", 64 << 20).await;
    let (mut stream, _) = common::Stream::open(running.addr, "web-2").await;
    stream
        .send(common::batch("web-2", 1, "old\n"))
        .await
        .unwrap();
    let mut watch = std::process::Command::new(env!("CARGO_BIN_EXE_safetytwin-replayer"))
        .args(["watch", "--host", "web-2", "--json", "--replayer"])
        .arg(format!("http://{}", running.addr))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let stderr = watch.stderr.take().unwrap();
    // Once it says where it starts, every later batch is its to print.
    let started = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stderr)
            .lines()
            .next()
            .unwrap()
            .unwrap()
    });
    assert_eq!(
        common::within(started).await.unwrap(),
        "watching web-2 after seq 1 (Ctrl-C stops)"
    );
    let lines = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .take(2)
            .map(Result::unwrap)
            .collect::<Vec<_>>()
    });
    // The watcher starts at the present: seq 1 is history, 2 and 3 are news.
    stream
        .send(common::batch("web-2", 2, "new\n"))
        .await
        .unwrap();
    stream
        .send(common::batch("web-2", 3, "newer\n"))
        .await
        .unwrap();
    let lines = common::within(lines).await.unwrap();
    let _ = watch.kill();
    let _ = watch.wait();
    let seqs: Vec<(u64, String)> = lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["seq"].as_u64().unwrap(),
                v["files"][0]["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(seqs, [(2, "new\n".to_owned()), (3, "newer\n".to_owned())]);
    drop(stream);
    running.stop().await;
}

/// Asserts a failed run said one line on stderr, with `what` in it, and no panic.
fn one_clear_line(code: Option<i32>, err: &str, what: &str) {
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(what), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );
}

/// A store file that is not a redb database, or is one damaged outside redb, stops `serve` with
/// one line, not a panic.
#[test]
fn local_a_garbage_store_is_one_line_and_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let store = dir.join("history.redb");
    let serve = |dir: &std::path::Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_safetytwin-replayer"))
            .args([
                "serve",
                "--twin",
                "none",
                "--insecure",
                "--listen",
                "127.0.0.1:0",
            ])
            .arg("--data")
            .arg(dir)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // Not a database at all.
    let garbage: Vec<u8> = (0..64 << 10)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&store, &garbage).unwrap();
    let (code, err) = serve(&dir);
    one_clear_line(code, &err, "cannot open history store");

    // A real store, then bytes flipped in the middle of it (a bad disk, a careless copy).
    std::fs::remove_file(&store).unwrap();
    {
        let s = safetytwin_store::Store::open(&store).unwrap();
        for seq in 1..=3 {
            let wire = common::batch("web-1", seq, &"x".repeat(20_000));
            s.append(&safetytwin_proto::convert::batch_from_wire(wire).unwrap())
                .unwrap();
        }
    }
    let mut bytes = std::fs::read(&store).unwrap();
    let len = bytes.len();
    for b in &mut bytes[len / 3..len / 3 + 4096] {
        *b ^= 0x5a;
    }
    std::fs::write(&store, &bytes).unwrap();
    let (code, err) = serve(&dir);
    one_clear_line(code, &err, "cannot open history store");
}

/// A valid store whose records do not decode (written by something else): serving starts, and
/// the operator's commands that meet the record fail with one line each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_a_corrupt_record_is_an_error_not_a_panic() {
    use std::sync::Arc;

    use safetytwin_services::server::Server;
    use safetytwin_store::Store;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("history.redb");
    {
        let s = Store::open(&path).unwrap();
        for seq in 1..=2 {
            let wire = common::batch("web-1", seq, "v");
            s.append(&safetytwin_proto::convert::batch_from_wire(wire).unwrap())
                .unwrap();
        }
    }
    {
        // Same tables, same key and value types, bytes that are no DeltaBatch or HostState.
        let db = redb::Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let batches: redb::TableDefinition<(&str, u64), &[u8]> =
                redb::TableDefinition::new("batches");
            let models: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("models");
            let junk: &[u8] = &[0xff; 64];
            tx.open_table(batches)
                .unwrap()
                .insert(("web-1", 2), junk)
                .unwrap();
            tx.open_table(models)
                .unwrap()
                .insert("web-1", junk)
                .unwrap();
        }
        tx.commit().unwrap();
    }
    let store = Arc::new(Store::open(&path).unwrap());
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), store)
        .await
        .unwrap();
    let addr = server.local_addr().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    for args in [
        vec!["state", "--host", "web-1"],
        vec!["diff", "1", "2", "--host", "web-1"],
    ] {
        let addr = addr.clone();
        let a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (code, _, err) = tokio::task::spawn_blocking(move || {
            client(&addr, &a.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .await
        .unwrap();
        one_clear_line(code, &err, "corrupt record");
    }
    // The rest of the history still answers.
    let a = addr.clone();
    let (code, out, err) =
        tokio::task::spawn_blocking(move || client(&a, &["state", "--host", "web-1", "--at", "1"]))
            .await
            .unwrap();
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("web-1 at seq 1"), "{out}");
    stop.send(()).unwrap();
    common::within(task).await.unwrap().unwrap();
}

/// `serve` makes its data directory and store private, and tightens a loose directory.
#[test]
fn local_serve_makes_the_store_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A port already taken stops serve after the store is opened.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_safetytwin-replayer"))
        .args(["serve", "--twin", "none", "--insecure", "--listen"])
        .arg(taken.local_addr().unwrap().to_string())
        .arg("--data")
        .arg(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("was mode 0755; tightened to 0700"), "{err}");
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("history.redb")), 0o600);
    // A shared directory is refused, not made private under its other users.
    let shared = dir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_safetytwin-replayer"))
        .args([
            "serve",
            "--twin",
            "none",
            "--insecure",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--data")
        .arg(&shared)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    one_clear_line(out.status.code(), &err, "shared directory");
    assert_eq!(mode(&shared), 0o1777);
}

/// Text a monitored host controls (here a process's argv, which may hold any bytes) reaches the
/// operator's terminal escaped: `ESC [2J` would clear the screen, `\r` rewrite the line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_hostile_text_is_printed_escaped() {
    use safetytwin_model::{Process, ProcessDelta, fixtures};
    let running = common::Running::start("local-cli-escape", 64 << 20).await;
    let (mut stream, _) = common::Stream::open(running.addr, "web-1").await;
    stream.send(common::batch("web-1", 1, "v")).await.unwrap();
    let mut b = safetytwin_proto::convert::batch_from_wire(common::batch("web-1", 2, "w")).unwrap();
    b.delta.processes.push(ProcessDelta::Upsert(Process {
        argv: vec![
            "sh".into(),
            "-c".into(),
            "\x1b[2J\rrm -rf /tmp/x\x07".into(),
        ],
        ..fixtures::process(42, "/bin/sh")
    }));
    stream
        .send(safetytwin_proto::convert::batch_to_wire(&b))
        .await
        .unwrap();
    let addr = running.addr.to_string();
    let (code, out, err) = tokio::task::spawn_blocking(move || client(&addr, &["diff", "1", "2"]))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(r"+ pid 42 sh -c \x1b[2J\rrm -rf /tmp/x\x07"),
        "{out}"
    );
    assert!(
        !out.contains('\x1b') && !out.contains('\r') && !out.contains('\x07'),
        "{out:?}"
    );
    // --json keeps the exact text, escaped by JSON itself.
    let addr = running.addr.to_string();
    let (code, out, _) =
        tokio::task::spawn_blocking(move || client(&addr, &["diff", "1", "2", "--json"]))
            .await
            .unwrap();
    assert_eq!(code, Some(0));
    assert!(!out.contains('\x1b') && !out.contains('\r'), "{out:?}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(v.to_string().contains(r"\u001b[2J\r"), "{v}");
    drop(stream);
    running.stop().await;
}
