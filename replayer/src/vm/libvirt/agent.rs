//! The QEMU guest-agent protocol: every file and program of the twin goes through these JSON
//! commands (`guest-exec`, `guest-file-*`, …) over libvirt's `qemu_agent_command`. Apart from
//! the domain's lifecycle because it is a protocol of its own, with its own limits (chunk
//! sizes, polling, timeouts) and replies to check.

use std::{
    fs,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use serde_json::{Value, json};

use super::{ExecOutput, Twin, VmError};

/// guest-exec has no "wait": status is polled, and this is the latency floor of every exec.
const EXEC_POLL: Duration = Duration::from_millis(20);
/// One agent call. Generous because a 1 MiB write under TCG on a busy host is slow, and an
/// expired call leaves the agent channel to be resynchronised by libvirt.
const AGENT_TIMEOUT_S: i32 = 60;
/// A ping while waiting for the guest: short, so a wedged agent costs one poll, not a minute.
const PING_TIMEOUT_S: i32 = 2;
/// While waiting for the guest, between pings.
const BOOT_POLL: Duration = Duration::from_millis(500);
/// Raw bytes per guest-file-write. Measured here (libvirt 11.3, bookworm's agent 7.2, TCG):
/// 128 KiB goes through in 0.1 s, 192 KiB (262 KB of base64) never comes back and keeps the
/// agent busy for a minute. The edge is near the host's default socket buffer (208 KiB), the
/// likely cause, so a request stays well below it.
const WRITE_CHUNK: usize = 64 << 10;
/// Raw bytes per guest-file-read.
const READ_CHUNK: usize = 1 << 20;

impl Twin {
    /// One agent command; returns its `return` value.
    pub(super) fn agent(
        &self,
        command: &str,
        arguments: Value,
        timeout_s: i32,
    ) -> Result<Value, VmError> {
        let mut request = json!({ "execute": command });
        if arguments.as_object().is_some_and(|a| !a.is_empty()) {
            request["arguments"] = arguments;
        }
        let reply = self
            .dom
            .qemu_agent_command(&request.to_string(), timeout_s, 0)
            .map_err(|e| VmError::Agent(format!("{command} on {}: {}", self.name, e.message())))?;
        let mut reply: Value = serde_json::from_str(&reply).map_err(|e| {
            VmError::Agent(format!("{command} on {}: unreadable reply: {e}", self.name))
        })?;
        Ok(reply["return"].take())
    }

    /// Opens `path`, runs `f` with the handle and closes it whatever `f` returned.
    fn with_file<T>(
        &self,
        path: &str,
        mode: &str,
        f: impl FnOnce(i64) -> Result<T, VmError>,
    ) -> Result<T, VmError> {
        let handle = self
            .agent(
                "guest-file-open",
                json!({ "path": path, "mode": mode }),
                AGENT_TIMEOUT_S,
            )
            .map_err(|e| in_path(e, path))?
            .as_i64()
            .ok_or_else(|| {
                VmError::Agent(format!(
                    "guest-file-open {path} on {}: no handle",
                    self.name
                ))
            })?;
        let result = f(handle).map_err(|e| in_path(e, path));
        let closed = self.agent(
            "guest-file-close",
            json!({ "handle": handle }),
            AGENT_TIMEOUT_S,
        );
        // The first error is the one that explains the second.
        let value = result?;
        closed.map_err(|e| in_path(e, path))?;
        Ok(value)
    }

    fn spawn(&self, argv: &[String]) -> Result<i64, VmError> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| VmError::Agent(format!("guest-exec on {}: empty argv", self.name)))?;
        let reply = self
            .agent(
                "guest-exec",
                json!({ "path": program, "arg": args, "capture-output": true }),
                AGENT_TIMEOUT_S,
            )
            .map_err(|e| in_path(e, program))?;
        reply["pid"]
            .as_i64()
            .ok_or_else(|| VmError::Agent(format!("guest-exec {program} on {}: no pid", self.name)))
    }

    /// The result of `pid` once it exited, else `None`.
    fn exec_status(&self, pid: i64, program: &str) -> Result<Option<ExecOutput>, VmError> {
        let status = self
            .agent("guest-exec-status", json!({ "pid": pid }), AGENT_TIMEOUT_S)
            .map_err(|e| in_path(e, program))?;
        if !status["exited"].as_bool().unwrap_or(false) {
            return Ok(None);
        }
        let code = match (status["exitcode"].as_i64(), status["signal"].as_i64()) {
            (_, Some(signal)) => 128 + signal,
            (Some(code), None) => code,
            (None, None) => -1,
        };
        let data = |key: &str| match &status[key] {
            Value::Null => Ok(Vec::new()),
            b64 => decode(b64, "guest-exec-status", &self.name),
        };
        Ok(Some(ExecOutput {
            code: i32::try_from(code).unwrap_or(-1),
            stdout: data("out-data")?,
            stderr: data("err-data")?,
        }))
    }

    /// Best effort: the agent cannot signal what it started, but the guest's kill can.
    fn kill(&self, pid: i64) {
        let argv = ["/bin/kill".to_owned(), "-KILL".to_owned(), pid.to_string()];
        if let Err(e) = self.spawn(&argv) {
            tracing::debug!(domain = %self.name, pid, "killing a timed-out program: {e}");
        }
    }

    /// Waits for the first answer of the guest agent; fails early when the domain stops.
    pub(super) fn wait_for_agent(
        &self,
        timeout: Duration,
        console_log: &Path,
    ) -> Result<Duration, VmError> {
        let started = Instant::now();
        loop {
            let last_error = match self.agent("guest-ping", json!({}), PING_TIMEOUT_S) {
                Ok(_) => return Ok(started.elapsed()),
                Err(e) => e,
            };
            let active = self.dom.is_active().unwrap_or(true);
            if !active || started.elapsed() > timeout {
                log_console_tail(console_log);
                let why = if active {
                    format!("no answer within {} s", timeout.as_secs())
                } else {
                    "the domain stopped".to_owned()
                };
                return Err(VmError::Agent(format!(
                    "{}: {why} (last: {last_error}); console log {}",
                    self.name,
                    console_log.display()
                )));
            }
            thread::sleep(BOOT_POLL);
        }
    }

    /// After a revert the guest's clock resumed at the snapshot's time. Without arguments the
    /// agent sets it from the RTC, which QEMU keeps on host time; a guest without hwclock
    /// refuses, and then its clock is just late.
    pub(super) fn set_time(&self) {
        if let Err(e) = self.agent("guest-set-time", json!({}), AGENT_TIMEOUT_S) {
            tracing::debug!(domain = %self.name, "guest-set-time after revert: {e}");
        }
    }

    pub(super) fn write_file(&self, path: &str, bytes: &[u8]) -> Result<(), VmError> {
        self.with_file(path, "w", |handle| {
            for chunk in bytes.chunks(WRITE_CHUNK) {
                let mut rest = chunk;
                while !rest.is_empty() {
                    let reply = self.agent(
                        "guest-file-write",
                        json!({ "handle": handle, "buf-b64": BASE64.encode(rest) }),
                        AGENT_TIMEOUT_S,
                    )?;
                    let count = reply["count"].as_u64().unwrap_or(0) as usize;
                    if count == 0 || count > rest.len() {
                        return Err(VmError::Agent(format!(
                            "guest-file-write {path} on {}: wrote {count} of {} bytes",
                            self.name,
                            rest.len()
                        )));
                    }
                    rest = &rest[count..];
                }
            }
            Ok(())
        })
    }

    pub(super) fn read_file(&self, path: &str) -> Result<Vec<u8>, VmError> {
        self.with_file(path, "r", |handle| {
            let mut content = Vec::new();
            loop {
                let reply = self.agent(
                    "guest-file-read",
                    json!({ "handle": handle, "count": READ_CHUNK }),
                    AGENT_TIMEOUT_S,
                )?;
                content.extend(decode(&reply["buf-b64"], "guest-file-read", &self.name)?);
                if reply["eof"].as_bool().unwrap_or(true) {
                    return Ok(content);
                }
            }
        })
    }

    pub(super) fn exec_all(
        &self,
        argvs: &[Vec<String>],
        timeout: Duration,
    ) -> Result<Vec<ExecOutput>, VmError> {
        let deadline = Instant::now() + timeout;
        // All started before any is polled: the guest runs them side by side.
        let pids = argvs
            .iter()
            .map(|argv| self.spawn(argv))
            .collect::<Result<Vec<_>, _>>()?;
        let mut outputs: Vec<Option<ExecOutput>> = vec![None; argvs.len()];
        loop {
            for (i, pid) in pids.iter().enumerate() {
                if outputs[i].is_none() {
                    outputs[i] = self.exec_status(*pid, &argvs[i][0])?;
                }
            }
            if outputs.iter().all(Option::is_some) {
                return Ok(outputs.into_iter().flatten().collect());
            }
            if Instant::now() > deadline {
                let running: Vec<&str> = outputs
                    .iter()
                    .zip(argvs)
                    .filter(|(o, _)| o.is_none())
                    .map(|(_, argv)| argv[0].as_str())
                    .collect();
                for (pid, _) in pids.iter().zip(&outputs).filter(|(_, o)| o.is_none()) {
                    self.kill(*pid);
                }
                return Err(VmError::Agent(format!(
                    "{} still running in {} after {:.1} s (killed)",
                    running.join(", "),
                    self.name,
                    timeout.as_secs_f64()
                )));
            }
            thread::sleep(EXEC_POLL);
        }
    }
}

/// Names the guest path in an agent error (the agent's own message often does not).
fn in_path(e: VmError, path: &str) -> VmError {
    match e {
        VmError::Agent(msg) => VmError::Agent(format!("{path}: {msg}")),
        other => other,
    }
}

fn decode(b64: &Value, command: &str, name: &str) -> Result<Vec<u8>, VmError> {
    let text = b64.as_str().unwrap_or_default();
    BASE64
        .decode(text)
        .map_err(|e| VmError::Agent(format!("{command} on {name}: bad base64: {e}")))
}

fn log_console_tail(log: &Path) {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    for line in &lines[lines.len().saturating_sub(20)..] {
        tracing::warn!("console | {line}");
    }
}
