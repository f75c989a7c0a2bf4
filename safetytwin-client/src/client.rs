//! The operator's side of the `Twin` service: a connection (plaintext on loopback, or TLS with
//! the replayer's CA and the consumer token) and the calls the CLI makes, returning domain
//! types. Printing is the binary's business.

use std::{path::Path, time::Duration};

use safetytwin_model::{Batch, DeltaBatch, HostModel};
use safetytwin_proto::{
    convert,
    v1::{self, twin_client::TwinClient},
};
use tonic::{
    Code, Request, Status,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

use safetytwin_proto::parts::{DeltaJoin, StateJoin};

/// Why a call failed, sorted by what the operator should do about it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The replayer could not be reached.
    #[error(
        "cannot reach the replayer{}: {why} (is `safetytwin-replayer serve` running?)",
        if url.is_empty() { String::new() } else { format!(" at {url}") }
    )]
    Unreachable {
        /// Where we tried (empty when a call lost its connection).
        url: String,
        /// The transport's reason.
        why: String,
    },
    /// What was asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The replayer refused or failed the call.
    #[error("{code:?}: {message}")]
    Call {
        /// The gRPC code.
        code: Code,
        /// The replayer's message.
        message: String,
    },
    /// Bad local input (a file that cannot be read, a malformed reply).
    #[error("{0}")]
    Local(String),
}

impl From<Status> for ClientError {
    fn from(s: Status) -> Self {
        match s.code() {
            Code::NotFound => ClientError::NotFound(s.message().to_owned()),
            // A status with a source was made here, from the transport's error; one that came
            // from the replayer (a twin's VM down, say) has none, and is the replayer's answer.
            Code::Unavailable if std::error::Error::source(&s).is_some() => {
                ClientError::Unreachable {
                    url: String::new(),
                    why: s.message().to_owned(),
                }
            }
            code => ClientError::Call {
                code,
                message: s.message().to_owned(),
            },
        }
    }
}

/// Adds the bearer token to every call.
#[derive(Clone)]
pub struct Token(Option<String>);

impl Interceptor for Token {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(t) = &self.0 {
            let value = format!("Bearer {t}")
                .parse()
                .map_err(|_| Status::invalid_argument("the token is not a valid header value"))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

/// A connected consumer.
pub struct Client {
    twin: TwinClient<InterceptedService<Channel, Token>>,
}

/// An answer that does not make sense, as an error naming `what` was asked for.
fn malformed<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> ClientError {
    move |e| ClientError::Local(format!("malformed {what}: {e}"))
}

fn local(what: &str, path: &Path, e: std::io::Error) -> ClientError {
    ClientError::Local(format!("cannot read {what} {}: {e}", path.display()))
}

impl Client {
    /// Connects to `url` (`http://` for a loopback replayer run with `--insecure`, `https://`
    /// with the replayer's `ca`), sending the token in `token_file` if given.
    pub async fn connect(
        url: &str,
        ca: Option<&Path>,
        token_file: Option<&Path>,
    ) -> Result<Client, ClientError> {
        let unreachable = |why: String| ClientError::Unreachable {
            url: url.to_owned(),
            why,
        };
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| ClientError::Local(format!("bad replayer URL {url:?}: {e}")))?
            .connect_timeout(Duration::from_secs(5));
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).map_err(|e| local("CA", ca, e))?;
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
                .map_err(|e| ClientError::Local(format!("TLS: {e}")))?;
        }
        let token = token_file
            .map(|p| {
                std::fs::read_to_string(p)
                    .map(|t| t.trim().to_owned())
                    .map_err(|e| local("token file", p, e))
            })
            .transpose()?;
        let channel = endpoint.connect().await.map_err(|e| {
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                why = s.to_string();
                source = s.source();
            }
            unreachable(why)
        })?;
        Ok(Client {
            twin: TwinClient::with_interceptor(channel, Token(token))
                .max_decoding_message_size(safetytwin_proto::MAX_MESSAGE_BYTES),
        })
    }

    /// The replayer's status and its twins.
    pub async fn status(&mut self) -> Result<v1::StatusResponse, ClientError> {
        Ok(self.twin.status(v1::StatusRequest {}).await?.into_inner())
    }

    /// Every host with its last seq.
    pub async fn hosts(&mut self) -> Result<Vec<v1::HostInfo>, ClientError> {
        Ok(self
            .twin
            .list_hosts(v1::ListHostsRequest {})
            .await?
            .into_inner()
            .hosts)
    }

    /// The one host, when `host` is not given and there is exactly one.
    pub async fn resolve_host(&mut self, host: Option<String>) -> Result<String, ClientError> {
        if let Some(h) = host {
            return Ok(h);
        }
        let hosts = self.hosts().await?;
        match hosts.as_slice() {
            [one] => Ok(one.host_id.clone()),
            [] => Err(ClientError::NotFound(
                "the replayer has no hosts yet".into(),
            )),
            many => Err(ClientError::Local(format!(
                "{} hosts: name one with --host ({})",
                many.len(),
                many.iter()
                    .map(|h| h.host_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Snapshots of `host` (empty: every host).
    pub async fn snapshots(&mut self, host: &str) -> Result<Vec<v1::Snapshot>, ClientError> {
        Ok(self
            .twin
            .list_snapshots(v1::ListSnapshotsRequest {
                host_id: host.to_owned(),
            })
            .await?
            .into_inner()
            .snapshots)
    }

    /// Reverts to `snapshot` (of `host`, or of whichever host has it).
    pub async fn revert(
        &mut self,
        host: &str,
        snapshot: &str,
    ) -> Result<v1::Snapshot, ClientError> {
        self.twin
            .revert(v1::RevertRequest {
                host_id: host.to_owned(),
                snapshot: snapshot.to_owned(),
            })
            .await?
            .into_inner()
            .snapshot
            .ok_or_else(|| ClientError::Local("Revert answered without a snapshot".into()))
    }

    /// Lets `host`'s twin follow the history again; returns where it stands.
    pub async fn resume(&mut self, host: &str) -> Result<u64, ClientError> {
        Ok(self
            .twin
            .resume(v1::ResumeRequest {
                host_id: host.to_owned(),
            })
            .await?
            .into_inner()
            .applied_seq)
    }

    /// What `host`'s twin holds, compared with the host's model at the twin's seq.
    pub async fn verify(&mut self, host: &str) -> Result<v1::VerifyResponse, ClientError> {
        Ok(self
            .twin
            .verify(v1::VerifyRequest {
                host_id: host.to_owned(),
            })
            .await?
            .into_inner())
    }

    /// `host`'s model at `at` (latest when None) and the seq it is at.
    pub async fn state(
        &mut self,
        host: &str,
        at: Option<v1::get_state_request::At>,
    ) -> Result<(u64, HostModel), ClientError> {
        let mut parts = self
            .twin
            .get_state_parts(v1::GetStateRequest {
                host_id: host.to_owned(),
                at,
            })
            .await?
            .into_inner();
        let mut join = StateJoin::default();
        while let Some(part) = parts.message().await? {
            join.push(part).map_err(malformed("state"))?;
        }
        let (seq, state) = join.finish().map_err(malformed("state"))?;
        let model = convert::model_from_wire(state).map_err(malformed("state"))?;
        Ok((seq, model))
    }

    /// The net changes of `host` from `from` to `to`.
    pub async fn diff(
        &mut self,
        host: &str,
        from: u64,
        to: u64,
    ) -> Result<DeltaBatch, ClientError> {
        let mut parts = self
            .twin
            .diff_parts(v1::DiffRequest {
                host_id: host.to_owned(),
                from_seq: from,
                to_seq: to,
            })
            .await?
            .into_inner();
        let mut join = DeltaJoin::default();
        while let Some(part) = parts.message().await? {
            join.push(part).map_err(malformed("diff"))?;
        }
        let delta = join.finish().map_err(malformed("diff"))?;
        let batch = convert::batch_from_wire(delta).map_err(malformed("diff"))?;
        Ok(batch.delta)
    }

    /// Every batch after `from_seq` of `host` (empty: all hosts), then each new one, to `f`
    /// until it returns false or the stream ends.
    pub async fn watch(
        &mut self,
        host: &str,
        from_seq: u64,
        mut f: impl FnMut(Batch) -> bool,
    ) -> Result<(), ClientError> {
        let mut stream = self
            .twin
            .subscribe(v1::SubscribeRequest {
                host_id: host.to_owned(),
                from_seq,
                skip_empty: true,
                ..v1::SubscribeRequest::default()
            })
            .await?
            .into_inner();
        while let Some(b) = stream.message().await? {
            let batch = convert::batch_from_wire(b)
                .map_err(|e| ClientError::Local(format!("malformed batch: {e}")))?;
            if !f(batch) {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// UNAVAILABLE from the replayer (its twin's VM is down) is its answer, whatever the text
    /// says; only a status made from a local transport error means it could not be reached.
    #[test]
    fn unreachable_is_a_transport_failure_not_a_word_in_the_message() {
        let answered = ClientError::from(Status::unavailable("transport of the twin failed"));
        assert!(
            matches!(
                answered,
                ClientError::Call {
                    code: Code::Unavailable,
                    ..
                }
            ),
            "{answered:?}"
        );
        let mut lost = Status::unavailable("error trying to connect");
        lost.set_source(Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        let lost = ClientError::from(lost);
        assert!(matches!(lost, ClientError::Unreachable { .. }), "{lost:?}");
        assert_eq!(
            lost.to_string(),
            "cannot reach the replayer: error trying to connect (is `safetytwin-replayer serve` \
             running?)"
        );
    }

    /// A replayer that is not there is unreachable at once, with its address in the message.
    #[tokio::test]
    async fn connecting_to_nothing_is_unreachable() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", free.local_addr().unwrap());
        drop(free);
        let Err(e) = Client::connect(&url, None, None).await else {
            panic!("connected to {url}, where nothing listens");
        };
        assert!(matches!(e, ClientError::Unreachable { .. }), "{e:?}");
        assert!(e.to_string().contains(&url), "{e}");
    }
}
