//! The package pool on the controller: the exact `.deb` of each name, architecture and version
//! a twin needs, obtained once with the ordinary Debian tools (`apt-get download`, against the
//! controller's sources of the host's release) and kept content-addressed under the replayer's
//! data directory: `sha256/<hash>.deb`, found through `index/<name>_<version>_<arch>`.
//!
//! A version the sources no longer carry (a point release replaced it) cannot be obtained:
//! that is an error naming the package and version, which the applier reports as a skipped
//! item, never a silent partial twin.

use std::{
    fs,
    io::{Read, Write},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU64, Ordering},
};

use safetytwin_model::{Package, packages};
use sha2::{Digest, Sha256};

/// Why a package could not be had.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The sources do not carry it (or apt failed).
    #[error("{package} {version}: cannot be obtained: {why}")]
    Unavailable {
        /// `name:arch`.
        package: String,
        /// The version asked for.
        version: String,
        /// What apt said.
        why: String,
    },
    /// The pool directory could not be read or written.
    #[error("package pool {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// One package in the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deb {
    /// Lower-case hex SHA-256 of the file.
    pub sha256: String,
    /// Where it is.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
}

/// How a package file is obtained: into a directory of its own, returning the file; and how
/// its dependencies are read.
pub trait Fetch: Send + Sync {
    /// Puts `package`'s `.deb` into `dir` (empty, the pool's own) and returns its path.
    fn fetch(&self, package: &Package, dir: &Path) -> Result<PathBuf, String>;

    /// The version of `name` for `arch` the sources carry now (apt's candidate).
    fn candidate(&self, name: &str, arch: &str) -> Result<String, String> {
        let spec = match arch {
            "" | "all" => name.to_owned(),
            arch => format!("{name}:{arch}"),
        };
        let out = Command::new("apt-cache")
            .args(["show", "--no-all-versions", "--", &spec])
            .output()
            .map_err(|e| format!("apt-cache: {e}"))?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("Version: ").map(str::to_owned))
            .ok_or_else(|| format!("the sources carry no {spec}"))
    }

    /// The dependency fields of the `.deb` at `deb`, as `dpkg-deb --field` prints them.
    fn control(&self, deb: &Path) -> Result<String, String> {
        let out = Command::new("dpkg-deb")
            .arg("--field")
            .arg(deb)
            .args(["Pre-Depends", "Depends"])
            .output()
            .map_err(|e| format!("dpkg-deb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "dpkg-deb --field {}: {}",
                deb.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// `apt-get download NAME[:ARCH]=VERSION`, run in the directory.
#[derive(Debug, Default)]
pub struct AptDownload;

impl Fetch for AptDownload {
    fn fetch(&self, p: &Package, dir: &Path) -> Result<PathBuf, String> {
        // Checked again here: the name and version become one apt argument, after `--`.
        packages::check(p).map_err(|e| e.to_string())?;
        let spec = match p.arch.as_str() {
            "" | "all" => format!("{}={}", p.name, p.version),
            arch => format!("{}:{arch}={}", p.name, p.version),
        };
        let out = Command::new("apt-get")
            .args(["download", "-q", "--", &spec])
            .current_dir(dir)
            .output()
            .map_err(|e| format!("apt-get: {e}"))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let why = err
                .lines()
                .filter(|l| l.starts_with("E:"))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(if why.is_empty() {
                format!("apt-get download exited with {}", out.status)
            } else {
                why
            });
        }
        let mut debs = fs::read_dir(dir)
            .map_err(|e| e.to_string())?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "deb"));
        match (debs.next(), debs.next()) {
            (Some(deb), None) => Ok(deb),
            _ => Err("apt-get download left no single .deb".into()),
        }
    }
}

/// The pool: a directory and a way to fill it.
pub struct Pool {
    dir: PathBuf,
    fetch: Box<dyn Fetch>,
    /// Names the download directories of concurrent fetches apart.
    next: AtomicU64,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("dir", &self.dir).finish()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PoolError + '_ {
    move |source| PoolError::Io {
        path: path.to_owned(),
        source,
    }
}

fn hash_file(path: &Path) -> Result<(String, u64), PoolError> {
    let mut f = fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((format!("{:x}", h.finalize()), size))
}

impl Pool {
    /// The pool in `dir` (created, private to the replayer's user), filled by `fetch`.
    pub fn open(dir: impl Into<PathBuf>, fetch: Box<dyn Fetch>) -> Result<Pool, PoolError> {
        let dir = dir.into();
        for sub in ["sha256", "index", "tmp"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).map_err(io(&d))?;
        }
        Ok(Pool {
            dir,
            fetch,
            next: AtomicU64::new(0),
        })
    }

    fn index_path(&self, p: &Package) -> PathBuf {
        // Every character of a checked name, version and architecture is safe in a file name.
        self.dir
            .join("index")
            .join(format!("{}_{}_{}", p.name, p.version, p.arch))
    }

    fn blob_path(&self, sha256: &str) -> PathBuf {
        self.dir.join("sha256").join(format!("{sha256}.deb"))
    }

    /// What `deb` (of `p`) depends on: groups of alternatives ([`packages::parse_depends`]).
    pub fn depends(
        &self,
        p: &Package,
        deb: &Deb,
    ) -> Result<Vec<Vec<packages::Alternative>>, PoolError> {
        self.fetch
            .control(&deb.path)
            .map(|control| packages::parse_depends(&control))
            .map_err(|why| PoolError::Unavailable {
                package: p.key(),
                version: p.version.clone(),
                why,
            })
    }

    /// `p` at the version the sources carry now, when that is another one (for a dependency
    /// whose own version they no longer carry).
    pub fn nearest(&self, p: &Package) -> Option<Package> {
        let version = self.fetch.candidate(&p.name, &p.arch).ok()?;
        let nearest = Package {
            version,
            ..p.clone()
        };
        (nearest.version != p.version && packages::check(&nearest).is_ok()).then_some(nearest)
    }

    /// The `.deb` of `p`, from the pool, or obtained and added to it.
    pub fn get(&self, p: &Package) -> Result<Deb, PoolError> {
        let unavailable = |why: String| PoolError::Unavailable {
            package: p.key(),
            version: p.version.clone(),
            why,
        };
        packages::check(p).map_err(|e| unavailable(e.to_string()))?;
        let index = self.index_path(p);
        if let Ok(sha256) = fs::read_to_string(&index) {
            let path = self.blob_path(sha256.trim());
            // The blob is checked against its name: a damaged pool refetches, never installs
            // something else.
            if let Ok((actual, size)) = hash_file(&path)
                && actual == sha256.trim()
            {
                return Ok(Deb {
                    sha256: actual,
                    path,
                    size,
                });
            }
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join("tmp")
            .join(format!("{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        let fetched = self.fetch.fetch(p, &tmp);
        let result = fetched.map_err(unavailable).and_then(|deb| {
            let (sha256, size) = hash_file(&deb)?;
            let path = self.blob_path(&sha256);
            fs::rename(&deb, &path).map_err(io(&path))?;
            let staged = tmp.join("index");
            let mut f = fs::File::create(&staged).map_err(io(&staged))?;
            f.write_all(sha256.as_bytes()).map_err(io(&staged))?;
            fs::rename(&staged, &index).map_err(io(&index))?;
            Ok(Deb { sha256, path, size })
        });
        let _ = fs::remove_dir_all(&tmp);
        result
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use safetytwin_model::fixtures;

    use super::*;

    /// Writes a file named after the package, counting its calls; `missing` is not carried.
    #[derive(Default)]
    struct Fake {
        calls: Mutex<Vec<String>>,
    }

    impl Fetch for Fake {
        fn fetch(&self, p: &Package, dir: &Path) -> Result<PathBuf, String> {
            self.calls.lock().unwrap().push(p.key());
            if p.name == "missing" {
                return Err("E: Can't find a source to download version".into());
            }
            let path = dir.join(format!("{}_{}.deb", p.name, p.version));
            fs::write(&path, format!("deb of {} {}", p.name, p.version)).unwrap();
            Ok(path)
        }
    }

    /// A pool path in a fresh directory, not made yet (the pool makes it); the directory goes
    /// when the guard drops.
    fn dir() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("pool");
        (tmp, d)
    }

    #[test]
    fn obtains_once_keeps_by_content_and_names_what_it_cannot_have() {
        let (_tmp, d) = dir();
        let fake = std::sync::Arc::new(Fake::default());
        struct Shared(std::sync::Arc<Fake>);
        impl Fetch for Shared {
            fn fetch(&self, p: &Package, dir: &Path) -> Result<PathBuf, String> {
                self.0.fetch(p, dir)
            }
        }
        let pool = Pool::open(&d, Box::new(Shared(fake.clone()))).unwrap();
        let tree = fixtures::package("tree", "2.1.0-1");
        let a = pool.get(&tree).unwrap();
        let b = pool.get(&tree).unwrap();
        assert_eq!(a, b);
        assert_eq!(fake.calls.lock().unwrap().len(), 1, "fetched once");
        assert_eq!(
            a.sha256,
            format!("{:x}", Sha256::digest(b"deb of tree 2.1.0-1"))
        );
        assert!(a.path.starts_with(d.join("sha256")));

        // A damaged blob is fetched again, not handed out.
        fs::write(&a.path, "garbage").unwrap();
        assert_eq!(pool.get(&tree).unwrap().sha256, a.sha256);
        assert_eq!(fake.calls.lock().unwrap().len(), 2);

        let e = pool.get(&fixtures::package("missing", "1.0")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "missing:amd64 1.0: cannot be obtained: E: Can't find a source to download version"
        );
        // A version that could be an option never reaches apt.
        let e = pool
            .get(&fixtures::package("tree", "--allow-downgrades"))
            .unwrap_err();
        assert!(matches!(e, PoolError::Unavailable { .. }), "{e}");
        assert_eq!(fake.calls.lock().unwrap().len(), 3);
        assert_eq!(fs::read_dir(d.join("tmp")).unwrap().count(), 0);
    }

    /// For real, against the controller's apt sources: the exact version of a small package
    /// (`tree`, the candidate apt knows), and a version the sources do not carry.
    #[test]
    fn apt_download_obtains_the_exact_version_or_names_the_missing_one() {
        let candidate = Command::new("apt-cache")
            .args(["show", "--no-all-versions", "tree"])
            .output();
        let Some(version) = candidate.ok().and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("Version: ").map(str::to_owned))
        }) else {
            eprintln!("skipping: apt-cache knows no `tree` (no Debian sources here)");
            return;
        };
        let (_tmp, d) = dir();
        let pool = Pool::open(&d, Box::new(AptDownload)).unwrap();
        let tree = Package {
            arch: "amd64".into(),
            ..fixtures::package("tree", &version)
        };
        let deb = pool.get(&tree).unwrap();
        let field = |f: &str| {
            let out = Command::new("dpkg-deb")
                .args(["-f", deb.path.to_str().unwrap(), f])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        assert_eq!(
            (field("Package"), field("Version")),
            ("tree".into(), version)
        );
        let e = pool.get(&fixtures::package("tree", "0.0.0-0")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("tree:amd64 0.0.0-0: cannot be obtained: E:"),
            "{e}"
        );
    }
}
