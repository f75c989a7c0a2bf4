//! Privileged: every tracepoint the daemon attaches its file probes to exists in tracefs, and
//! the kernel fires it for the number the daemon's table gives (`libc::SYS_<name>`), which is
//! the number the probes look up in the `SYSCALLS` map. Each syscall is made once, from a
//! thread of its own, with every argument -1 (a bad fd, a bad pointer, bad flags), so it fails
//! without side effects; a private tracefs instance records which events it fired.

mod common;

use std::{fs, path::PathBuf, sync::mpsc};

use safetytwin_daemon::{syscalls::SYSCALLS, tracer};

const TRACEFS: &str = "/sys/kernel/tracing";

/// A tracefs instance: its own ring buffer and event switches, removed on drop.
struct Instance(PathBuf);

impl Instance {
    fn new(name: &str) -> Instance {
        let dir = PathBuf::from(TRACEFS).join("instances").join(name);
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        Instance(dir)
    }

    /// Records `tracepoint` (category `syscalls`) of thread `tid` only, or stops recording it.
    fn record(&self, tracepoint: &str, tid: i64, on: bool) {
        let event = self.0.join("events/syscalls").join(tracepoint);
        if on {
            fs::write(event.join("filter"), format!("common_pid == {tid}")).unwrap();
        }
        fs::write(event.join("enable"), if on { "1" } else { "0" }).unwrap();
    }

    /// The events recorded since the last call, then clears them.
    fn take(&self) -> Vec<String> {
        let trace = self.0.join("trace");
        let text = fs::read_to_string(&trace).unwrap();
        // Opening `trace` for writing with O_TRUNC clears the buffer.
        fs::write(&trace, "").unwrap();
        text.lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

#[test]
fn every_attached_tracepoint_exists_and_fires_for_its_number() {
    if !common::privileged("every_attached_tracepoint_exists_and_fires_for_its_number") {
        return;
    }
    tracer::ensure_tracefs().expect("tracefs");
    let events = PathBuf::from(TRACEFS).join("events/syscalls");
    let instance = Instance::new(&common::marker("safetytwin-syscalls"));

    // The caller makes nothing but the syscalls it is asked for (and the futex calls of the
    // channels, which are not traced here).
    let (call, calls) = mpsc::channel::<u32>();
    let (answer, answers) = mpsc::channel::<(libc::c_long, i32)>();
    let caller = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        answer.send((unsafe { libc::gettid() }.into(), 0)).unwrap();
        for nr in calls {
            let bad: libc::c_long = -1;
            // SAFETY: every argument is invalid (fd -1, pointer -1, flags -1): the call fails
            // before it touches anything.
            let rc = unsafe { libc::syscall(nr.into(), bad, bad, bad, bad, bad, bad) };
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            answer.send((rc, errno)).unwrap();
        }
    });
    let tid = answers.recv().unwrap().0;

    let mut absent = Vec::new();
    for s in SYSCALLS {
        let hooks = vec![s.tracepoint()];
        let missing: Vec<&String> = hooks
            .iter()
            .filter(|t| {
                fs::read_to_string(events.join(t).join("id"))
                    .ok()
                    .and_then(|id| id.trim().parse::<u64>().ok())
                    .is_none()
            })
            .collect();
        if !missing.is_empty() {
            // The tracer skips a tracepoint this kernel lacks; that is only right when the
            // kernel lacks the syscall itself.
            call.send(s.nr).unwrap();
            let (rc, errno) = answers.recv().unwrap();
            assert_eq!(
                (rc, errno),
                (-1, libc::ENOSYS),
                "{missing:?} missing although the kernel has syscall {} ({})",
                s.nr,
                s.name
            );
            absent.push(s.name);
            continue;
        }

        for t in &hooks {
            instance.record(t, tid, true);
        }
        call.send(s.nr).unwrap();
        let (rc, errno) = answers.recv().unwrap();
        for t in &hooks {
            instance.record(t, tid, false);
        }
        assert_eq!(rc, -1, "{} with bad arguments succeeded", s.name);
        assert_ne!(errno, libc::ENOSYS, "the kernel lacks {}", s.name);
        let fired = instance.take();
        assert_eq!(
            fired.len(),
            hooks.len(),
            "syscall {} fired {fired:#?}, not once each of {hooks:?}: the table's number is not \
             this tracepoint's",
            s.nr
        );
    }
    drop(call);
    caller.join().unwrap();
    if !absent.is_empty() {
        eprintln!("this kernel lacks {absent:?}; the daemon skips them");
    }
}
