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
use serde::{Deserialize, Serialize, de::DeserializeOwned};

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
    /// One agent command and its typed reply. A reply without a field the command must
    /// return is an error naming the command, never a default.
    fn call<C: Command>(&self, command: &C, timeout_s: i32) -> Result<C::Reply, VmError> {
        let fail = |why: String| VmError::Agent(format!("{} on {}: {why}", C::NAME, self.name));
        let reply = self
            .dom
            .qemu_agent_command(&request(command).map_err(fail)?, timeout_s, 0)
            .map_err(|e| fail(e.message().to_owned()))?;
        parse_reply::<C>(&reply).map_err(fail)
    }

    /// Opens `path`, runs `f` with the handle and closes it whatever `f` returned.
    fn with_file<T>(
        &self,
        path: &str,
        mode: &str,
        f: impl FnOnce(i64) -> Result<T, VmError>,
    ) -> Result<T, VmError> {
        let handle = self
            .call(&FileOpen { path, mode }, AGENT_TIMEOUT_S)
            .map_err(|e| in_path(e, path))?;
        let result = f(handle).map_err(|e| in_path(e, path));
        let closed = self.call(&FileClose { handle }, AGENT_TIMEOUT_S);
        // The first error is the one that explains the second.
        let value = result?;
        closed.map_err(|e| in_path(e, path))?;
        Ok(value)
    }

    fn spawn(&self, argv: &[String]) -> Result<i64, VmError> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| VmError::Agent(format!("guest-exec on {}: empty argv", self.name)))?;
        let started = self
            .call(
                &Exec {
                    path: program,
                    arg: args,
                    capture_output: true,
                },
                AGENT_TIMEOUT_S,
            )
            .map_err(|e| in_path(e, program))?;
        Ok(started.pid)
    }

    /// The result of `pid` once it exited, else `None`.
    fn exec_status(&self, pid: i64, program: &str) -> Result<Option<ExecOutput>, VmError> {
        let status = self
            .call(&ExecStatus { pid }, AGENT_TIMEOUT_S)
            .and_then(|status| {
                status.output().map_err(|why| {
                    VmError::Agent(format!("{} on {}: {why}", ExecStatus::NAME, self.name))
                })
            })
            .map_err(|e| in_path(e, program))?;
        Ok(status)
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
            let last_error = match self.call(&Ping, PING_TIMEOUT_S) {
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
        if let Err(e) = self.call(&SetTime, AGENT_TIMEOUT_S) {
            tracing::debug!(domain = %self.name, "guest-set-time after revert: {e}");
        }
    }

    pub(super) fn write_file(&self, path: &str, bytes: &[u8]) -> Result<(), VmError> {
        self.with_file(path, "w", |handle| {
            for chunk in bytes.chunks(WRITE_CHUNK) {
                let mut rest = chunk;
                while !rest.is_empty() {
                    let buf_b64 = BASE64.encode(rest);
                    let written = self.call(&FileWrite { handle, buf_b64 }, AGENT_TIMEOUT_S)?;
                    let count = written.count;
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
                let read = self.call(
                    &FileRead {
                        handle,
                        count: READ_CHUNK,
                    },
                    AGENT_TIMEOUT_S,
                )?;
                let eof = read.eof;
                content.extend(read.bytes().map_err(|why| {
                    VmError::Agent(format!("{} on {}: {why}", FileRead::NAME, self.name))
                })?);
                if eof {
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

fn log_console_tail(log: &Path) {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    for line in &lines[lines.len().saturating_sub(20)..] {
        tracing::warn!("console | {line}");
    }
}

/// One guest-agent command: its name, its arguments (the struct's fields) and its reply.
trait Command: Serialize {
    const NAME: &'static str;
    /// Whether `arguments` is sent; the agent refuses it for commands that take none.
    const HAS_ARGUMENTS: bool = true;
    type Reply: DeserializeOwned;
}

/// The request's JSON text.
fn request<C: Command>(command: &C) -> Result<String, String> {
    #[derive(Serialize)]
    struct Request<'a, C> {
        execute: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        arguments: Option<&'a C>,
    }
    serde_json::to_string(&Request {
        execute: C::NAME,
        arguments: C::HAS_ARGUMENTS.then_some(command),
    })
    .map_err(|e| format!("cannot encode the request: {e}"))
}

/// The `return` member of a reply, as the command's reply type.
fn parse_reply<C: Command>(text: &str) -> Result<C::Reply, String> {
    #[derive(Deserialize)]
    struct Reply<R> {
        #[serde(rename = "return")]
        value: R,
    }
    serde_json::from_str::<Reply<C::Reply>>(text)
        .map(|reply| reply.value)
        .map_err(|e| format!("malformed reply: {e}"))
}

/// An empty `{}` reply (commands that only succeed or fail).
#[derive(Debug, Deserialize)]
struct Done {}

#[derive(Serialize)]
struct Ping;

impl Command for Ping {
    const NAME: &'static str = "guest-ping";
    const HAS_ARGUMENTS: bool = false;
    type Reply = Done;
}

#[derive(Serialize)]
struct SetTime;

impl Command for SetTime {
    const NAME: &'static str = "guest-set-time";
    const HAS_ARGUMENTS: bool = false;
    type Reply = Done;
}

#[derive(Serialize)]
struct FileOpen<'a> {
    path: &'a str,
    mode: &'a str,
}

impl Command for FileOpen<'_> {
    const NAME: &'static str = "guest-file-open";
    /// The handle.
    type Reply = i64;
}

#[derive(Serialize)]
struct FileClose {
    handle: i64,
}

impl Command for FileClose {
    const NAME: &'static str = "guest-file-close";
    type Reply = Done;
}

#[derive(Serialize)]
struct FileWrite {
    handle: i64,
    #[serde(rename = "buf-b64")]
    buf_b64: String,
}

impl Command for FileWrite {
    const NAME: &'static str = "guest-file-write";
    type Reply = Written;
}

/// guest-file-write's reply.
#[derive(Debug, Deserialize)]
struct Written {
    /// Bytes written (of the decoded buffer).
    count: usize,
}

#[derive(Serialize)]
struct FileRead {
    handle: i64,
    count: usize,
}

impl Command for FileRead {
    const NAME: &'static str = "guest-file-read";
    type Reply = Read;
}

/// guest-file-read's reply.
#[derive(Debug, Deserialize)]
struct Read {
    /// Bytes read, which `buf-b64` must decode to.
    count: usize,
    #[serde(rename = "buf-b64")]
    buf_b64: String,
    eof: bool,
}

impl Read {
    fn bytes(self) -> Result<Vec<u8>, String> {
        let bytes = decode(&self.buf_b64)?;
        if bytes.len() != self.count {
            return Err(format!(
                "count {} but {} bytes in buf-b64",
                self.count,
                bytes.len()
            ));
        }
        Ok(bytes)
    }
}

#[derive(Serialize)]
struct Exec<'a> {
    path: &'a str,
    arg: &'a [String],
    #[serde(rename = "capture-output")]
    capture_output: bool,
}

impl Command for Exec<'_> {
    const NAME: &'static str = "guest-exec";
    type Reply = Started;
}

/// guest-exec's reply.
#[derive(Debug, Deserialize)]
struct Started {
    pid: i64,
}

#[derive(Serialize)]
struct ExecStatus {
    pid: i64,
}

impl Command for ExecStatus {
    const NAME: &'static str = "guest-exec-status";
    type Reply = Status;
}

/// guest-exec-status's reply: only `exited` is always there; the rest once it is true.
#[derive(Debug, Deserialize)]
struct Status {
    exited: bool,
    exitcode: Option<i32>,
    signal: Option<i32>,
    #[serde(rename = "out-data")]
    out_data: Option<String>,
    #[serde(rename = "err-data")]
    err_data: Option<String>,
    #[serde(rename = "out-truncated", default)]
    out_truncated: bool,
    #[serde(rename = "err-truncated", default)]
    err_truncated: bool,
}

impl Status {
    /// The program's result once it exited (`None` while it runs). An exited program has an
    /// exit code or a signal; a reply with neither is an error, not a made-up code.
    fn output(self) -> Result<Option<ExecOutput>, String> {
        if !self.exited {
            return Ok(None);
        }
        let code = match (self.exitcode, self.signal) {
            (_, Some(signal)) => 128 + signal,
            (Some(code), None) => code,
            (None, None) => return Err("exited without exitcode or signal".into()),
        };
        if self.out_truncated || self.err_truncated {
            // The agent keeps 16 MiB of each; the plan's programs print far less.
            tracing::warn!("guest-exec-status: output truncated by the agent");
        }
        let data = |b64: Option<String>| b64.map_or(Ok(Vec::new()), |b64| decode(&b64));
        Ok(Some(ExecOutput {
            code,
            stdout: data(self.out_data)?,
            stderr: data(self.err_data)?,
        }))
    }
}

fn decode(b64: &str) -> Result<Vec<u8>, String> {
    BASE64.decode(b64).map_err(|e| format!("bad base64: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply<C: Command>(text: &str) -> Result<C::Reply, String> {
        parse_reply::<C>(text)
    }

    #[test]
    fn requests_carry_their_arguments_or_none() {
        assert_eq!(request(&Ping).unwrap(), r#"{"execute":"guest-ping"}"#);
        let argv = ["-c".to_owned(), "true".to_owned()];
        let exec = Exec {
            path: "/bin/sh",
            arg: &argv,
            capture_output: true,
        };
        assert_eq!(
            request(&exec).unwrap(),
            r#"{"execute":"guest-exec","arguments":{"path":"/bin/sh","arg":["-c","true"],"capture-output":true}}"#
        );
        let write = FileWrite {
            handle: 7,
            buf_b64: "aGk=".into(),
        };
        assert_eq!(
            request(&write).unwrap(),
            r#"{"execute":"guest-file-write","arguments":{"handle":7,"buf-b64":"aGk="}}"#
        );
    }

    #[test]
    fn good_replies_are_read() {
        reply::<Ping>(r#"{"return":{}}"#).unwrap();
        assert_eq!(reply::<FileOpen>(r#"{"return": 1000}"#).unwrap(), 1000);
        assert_eq!(
            reply::<FileWrite>(r#"{"return":{"count":3,"eof":false}}"#)
                .unwrap()
                .count,
            3
        );
        let read =
            reply::<FileRead>(r#"{"return":{"count":2,"buf-b64":"aGk=","eof":true}}"#).unwrap();
        assert!(read.eof);
        assert_eq!(read.bytes().unwrap(), b"hi");
        assert_eq!(
            reply::<Exec>(r#"{"return":{"pid":4242}}"#).unwrap().pid,
            4242
        );

        let running = reply::<ExecStatus>(r#"{"return":{"exited":false}}"#).unwrap();
        assert_eq!(running.output().unwrap(), None);
        let done = reply::<ExecStatus>(
            r#"{"return":{"exited":true,"exitcode":3,"out-data":"b3V0","err-data":"ZXJy"}}"#,
        )
        .unwrap();
        assert_eq!(
            done.output().unwrap(),
            Some(ExecOutput {
                code: 3,
                stdout: b"out".to_vec(),
                stderr: b"err".to_vec()
            })
        );
        let killed = reply::<ExecStatus>(r#"{"return":{"exited":true,"signal":9}}"#).unwrap();
        let killed = killed.output().unwrap().unwrap();
        assert_eq!((killed.code, killed.stdout.len()), (137, 0));
    }

    #[test]
    fn malformed_replies_are_errors_not_defaults() {
        // Missing required fields, wrong types, no `return`.
        for (text, field) in [
            (r#"{"return":{}}"#, "pid"),
            (r#"{"return":{"pid":"12"}}"#, "string"),
            (r#"{"error":{"class":"GenericError"}}"#, "return"),
        ] {
            let e = reply::<Exec>(text).unwrap_err();
            assert!(
                e.contains("malformed reply") && e.contains(field),
                "{text}: {e}"
            );
        }
        let e = reply::<ExecStatus>(r#"{"return":{"exitcode":0}}"#).unwrap_err();
        assert!(e.contains("exited"), "{e}");
        let e = reply::<FileWrite>(r#"{"return":{"eof":false}}"#).unwrap_err();
        assert!(e.contains("count"), "{e}");
        let e = reply::<FileRead>(r#"{"return":{"count":0,"buf-b64":""}}"#).unwrap_err();
        assert!(e.contains("eof"), "{e}");
        assert!(reply::<FileOpen>(r#"{"return":{}}"#).is_err());
        assert!(reply::<Ping>("not json").is_err());

        // Present but inconsistent.
        let exited_without_code = reply::<ExecStatus>(r#"{"return":{"exited":true}}"#).unwrap();
        assert!(
            exited_without_code
                .output()
                .unwrap_err()
                .contains("exitcode")
        );
        let bad_b64 =
            reply::<ExecStatus>(r#"{"return":{"exited":true,"exitcode":0,"out-data":"%%%"}}"#)
                .unwrap();
        assert!(bad_b64.output().unwrap_err().contains("base64"));
        let short =
            reply::<FileRead>(r#"{"return":{"count":5,"buf-b64":"aGk=","eof":true}}"#).unwrap();
        assert!(short.bytes().unwrap_err().contains("count 5"));
    }
}
