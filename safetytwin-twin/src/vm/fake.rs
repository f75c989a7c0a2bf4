//! A twin backend in memory, for tests without libvirt (cargo feature `testing`): it answers
//! the guest commands the applier runs the way a Debian guest would, keeps snapshots by name
//! and records every call, and can be told to fail in the ways the applier must survive.

use std::{collections::BTreeMap, sync::Mutex, time::Duration};

use safetytwin_model::fixtures;

use super::{DomainState, Ensured, ExecOutput, SnapshotInfo, TwinBackend, VmError};

/// Records every guest call; `systemctl start|restart` of `failing` fails; tar refuses
/// the archive entry `tar_refuses` (reporting it and extracting the others, as GNU tar
/// does) whenever the archive holds it.
#[derive(Default)]
pub struct FakeTwin {
    /// Every call, in order (`calls` takes them).
    pub calls: Mutex<Vec<String>>,
    /// The snapshots, oldest first.
    pub snapshots: Mutex<Vec<String>>,
    /// A unit whose start or restart fails.
    pub failing: Option<String>,
    /// The twin never answers after boot.
    pub no_boot: bool,
    /// An archive entry tar refuses.
    pub tar_refuses: Option<String>,
    /// tar refuses every archive.
    pub tar_broken: bool,
    /// The last file written (the apply's archive).
    pub archive: Mutex<Vec<u8>>,
    /// What `dpkg-query -W` answers: the guest's packages.
    pub dpkg: String,
    /// The image's release.
    pub release: Option<String>,
    /// What the guest holds of the paths written by tar: path → `find -printf` fields.
    pub held: Mutex<BTreeMap<String, String>>,
}

impl FakeTwin {
    fn log(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }
    /// The calls so far, taken.
    pub fn calls(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
    fn run(&self, argv: &[String]) -> ExecOutput {
        self.log(argv.join(" "));
        let fails = |u: &String| self.failing.as_ref() == Some(u);
        if argv[0] == "/bin/tar" && !self.tar_broken {
            self.files(argv);
        }
        if argv[0] == "/bin/tar" && self.tar_broken {
            return ExecOutput {
                code: 2,
                stdout: Vec::new(),
                stderr: b"/bin/tar: This does not look like a tar archive\n".to_vec(),
            };
        }
        if argv[0] == "/bin/tar"
            && let Some(refused) = &self.tar_refuses
        {
            let archive = self.archive.lock().unwrap();
            let held = tar::Archive::new(archive.as_slice())
                .entries()
                .unwrap()
                .any(|e| e.unwrap().path().unwrap().to_str() == Some(refused));
            if held {
                return ExecOutput {
                    code: 2,
                    stdout: Vec::new(),
                    stderr: format!(
                        "/bin/tar: {refused}: Cannot open: Operation not permitted\n\
                         /bin/tar: Exiting with failure status due to previous errors\n"
                    )
                    .into_bytes(),
                };
            }
        }
        if argv[0] != "/bin/tar"
            && let Some(out) = self.files(argv)
        {
            return out;
        }
        if argv[0] == "/usr/bin/dpkg-query" {
            return ExecOutput {
                code: 0,
                stdout: self.dpkg.clone().into_bytes(),
                stderr: Vec::new(),
            };
        }
        let (code, stdout) = match argv.get(1).map(String::as_str) {
            Some("start" | "restart") if fails(&argv[3]) => (1, String::new()),
            Some("is-active") => {
                let states: Vec<&str> = argv[3..]
                    .iter()
                    .map(|u| if fails(u) { "failed" } else { "active" })
                    .collect();
                (i32::from(states.contains(&"failed")) * 3, states.join("\n"))
            }
            _ => (0, String::new()),
        };
        ExecOutput {
            code,
            stdout: stdout.into_bytes(),
            stderr: Vec::new(),
        }
    }
}

impl FakeTwin {
    /// The file commands: tar extracts the archive (but the entry it refuses), rm
    /// removes, find and sha256sum read (every file's hash is the fixtures' one).
    fn files(&self, argv: &[String]) -> Option<ExecOutput> {
        let mut held = self.held.lock().unwrap();
        let operands = || argv.iter().filter(|a| a.starts_with('/')).skip(1);
        let out = match argv[0].as_str() {
            "/bin/tar" => {
                let archive = self.archive.lock().unwrap();
                for e in tar::Archive::new(archive.as_slice()).entries().unwrap() {
                    let e = e.unwrap();
                    if e.path().unwrap().to_str() == self.tar_refuses.as_deref() {
                        continue;
                    }
                    let h = e.header();
                    let kind = match h.entry_type() {
                        tar::EntryType::Directory => "d",
                        tar::EntryType::Symlink => "l",
                        _ => "f",
                    };
                    let target = e.link_name().unwrap().map(|t| t.display().to_string());
                    held.insert(
                        format!("/{}", e.path().unwrap().display()),
                        format!(
                            "{kind}\t{:o}\t{}\t{}\t{}",
                            h.mode().unwrap(),
                            h.uid().unwrap(),
                            h.gid().unwrap(),
                            target.unwrap_or_default()
                        ),
                    );
                }
                return None;
            }
            "/bin/rm" => {
                operands().for_each(|p| {
                    held.remove(p);
                });
                return None;
            }
            "/usr/bin/find" => operands()
                .filter_map(|p| held.get(p).map(|f| format!("{p}\t{f}\n")))
                .collect(),
            "/usr/bin/sha256sum" => argv[3..]
                .iter()
                .filter(|p| held.contains_key(*p))
                .map(|p| format!("{}  {p}\0", fixtures::SHA256))
                .collect(),
            _ => return None,
        };
        Some(ExecOutput {
            code: 0,
            stdout: String::into_bytes(out),
            stderr: Vec::new(),
        })
    }
}

impl TwinBackend for FakeTwin {
    fn ensure(&self, _: &str) -> Result<Ensured, VmError> {
        if self.no_boot {
            return Err(VmError::Agent("no answer within 240 s".into()));
        }
        Ok(Ensured {
            adopted: true,
            took: Duration::ZERO,
        })
    }
    fn state(&self, _: &str) -> Result<DomainState, VmError> {
        Ok(DomainState::Running)
    }
    fn write_file(&self, _: &str, path: &str, bytes: &[u8]) -> Result<(), VmError> {
        self.log(format!("write {path}"));
        *self.archive.lock().unwrap() = bytes.to_vec();
        Ok(())
    }
    fn read_file(&self, _: &str, _: &str) -> Result<Vec<u8>, VmError> {
        Ok(Vec::new())
    }
    fn exec(&self, _: &str, argv: &[String], _: Duration) -> Result<ExecOutput, VmError> {
        Ok(self.run(argv))
    }
    fn exec_all(
        &self,
        _: &str,
        argvs: &[Vec<String>],
        _: Duration,
    ) -> Result<Vec<ExecOutput>, VmError> {
        Ok(argvs.iter().map(|a| self.run(a)).collect())
    }
    fn snapshot(&self, _: &str, name: &str) -> Result<(), VmError> {
        self.log(format!("snapshot {name}"));
        self.snapshots.lock().unwrap().push(name.to_owned());
        Ok(())
    }
    fn revert(&self, _: &str, name: &str) -> Result<(), VmError> {
        self.log(format!("revert {name}"));
        Ok(())
    }
    fn delete_snapshot(&self, _: &str, name: &str) -> Result<(), VmError> {
        self.log(format!("delete {name}"));
        self.snapshots.lock().unwrap().retain(|s| s != name);
        Ok(())
    }
    fn snapshots(&self, _: &str) -> Result<Vec<SnapshotInfo>, VmError> {
        Ok(self
            .snapshots
            .lock()
            .unwrap()
            .iter()
            .map(|name| SnapshotInfo {
                name: name.clone(),
                created_unix: 0,
            })
            .collect())
    }
    fn release(&self) -> Option<String> {
        self.release.clone()
    }
}
