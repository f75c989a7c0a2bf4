//! The load generator behind `cargo xtask load`: simulated daemons speaking the real ingest
//! protocol (Hello, Resume, one batch at a time, Ack), each host on a connection of its own as a
//! daemon is, sending a batch of K changed files every S seconds to one of the listed replayers
//! (spread round-robin; on an error the host moves to the next replayer and resumes where the
//! history stands). Prints one JSON
//! object: batches acknowledged, their rate, the ack latency's p50/p99/max, and the errors.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Parser;
use safetytwin_model::{DeltaBatch, fixtures};
use safetytwin_proto::{
    convert,
    v1::{self, SyncRequest, ingest_client::IngestClient, sync_request, sync_response},
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Parser)]
#[command(about = "Simulated daemons against one or more replayers")]
struct Args {
    /// A replayer's gRPC URL (http://, --insecure); repeat for several.
    #[arg(long = "replayer", required = true)]
    replayers: Vec<String>,
    /// Simulated hosts.
    #[arg(long, default_value_t = 100)]
    hosts: usize,
    /// Seconds between one host's batches.
    #[arg(long, default_value_t = 10.0)]
    interval: f64,
    /// Files changed per batch.
    #[arg(long, default_value_t = 5)]
    changes: usize,
    /// How long to send, seconds.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Prefix of the simulated host ids (several runs on one store use different ones).
    #[arg(long, default_value = "load")]
    prefix: String,
}

#[derive(Default)]
struct Tally {
    acked: AtomicU64,
    /// Acked batches sent after every host had started (the steady state).
    steady: AtomicU64,
    errors: AtomicU64,
    /// Ack latencies, µs.
    latencies: Mutex<Vec<u64>>,
}

/// One batch of `changes` files of about 200 bytes each.
fn batch(host: &str, seq: u64, changes: usize) -> v1::DeltaBatch {
    let delta = DeltaBatch {
        files: (0..changes)
            .map(|i| {
                fixtures::upsert(
                    &format!("/etc/load/{i}.conf"),
                    fixtures::text(&format!("{host} seq={seq} file={i} {}\n", "x".repeat(160))),
                )
            })
            .collect(),
        ..DeltaBatch::default()
    };
    convert::batch_to_wire(&fixtures::batch(host, seq, delta))
}

/// One stream's session: Hello, Resume, then a batch every `interval` until `until`. Returns
/// at the first error (the caller reconnects elsewhere).
async fn session(
    channel: Channel,
    host: &str,
    args: &Args,
    until: Instant,
    steady_from: Instant,
    next_at: &mut Instant,
    tally: &Tally,
) -> Result<(), String> {
    let mut client = IngestClient::new(channel);
    let (tx, rx) = mpsc::channel(4);
    tx.send(SyncRequest {
        msg: Some(sync_request::Msg::Hello(v1::Hello {
            host_id: host.to_owned(),
            boot_id: "boot".into(),
            watched: vec!["/etc".into()],
            ..v1::Hello::default()
        })),
    })
    .await
    .map_err(|e| e.to_string())?;
    let mut responses = client
        .sync(ReceiverStream::new(rx))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let mut seq = match responses.message().await.map_err(|e| e.to_string())? {
        Some(v1::SyncResponse {
            msg: Some(sync_response::Msg::Resume(r)),
        }) => r.last_seq,
        other => return Err(format!("no Resume: {other:?}")),
    };
    loop {
        tokio::time::sleep_until((*next_at).into()).await;
        if Instant::now() >= until {
            return Ok(());
        }
        seq += 1;
        let sent = Instant::now();
        tx.send(SyncRequest {
            msg: Some(sync_request::Msg::Batch(batch(host, seq, args.changes))),
        })
        .await
        .map_err(|e| e.to_string())?;
        match responses.message().await.map_err(|e| e.to_string())? {
            Some(v1::SyncResponse {
                msg: Some(sync_response::Msg::Ack(ack)),
            }) if ack.seq == seq => {
                tally.acked.fetch_add(1, Ordering::Relaxed);
                if sent >= steady_from {
                    tally.steady.fetch_add(1, Ordering::Relaxed);
                }
                tally
                    .latencies
                    .lock()
                    .expect("latencies")
                    .push(sent.elapsed().as_micros() as u64);
            }
            other => return Err(format!("no Ack of {seq}: {other:?}")),
        }
        *next_at += Duration::from_secs_f64(args.interval);
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = Arc::new(Args::parse());
    if args.seconds < 2.0 * args.interval {
        return Err(
            "--seconds must be at least twice --interval (a steady state to measure)".into(),
        );
    }
    let endpoints: Vec<Endpoint> = args
        .replayers
        .iter()
        .map(|u| Endpoint::from_shared(u.clone()).map_err(|e| format!("{u}: {e}")))
        .collect::<Result<_, _>>()?;
    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(args.seconds);
    let mut tasks = Vec::new();
    for i in 0..args.hosts {
        let (args, tally) = (args.clone(), tally.clone());
        // A connection of its own per host and replayer, made when first used.
        let channels: Vec<Channel> = endpoints.iter().map(|e| e.connect_lazy()).collect();
        tasks.push(tokio::spawn(async move {
            let host = format!("{}-{i}", args.prefix);
            // Spread over the interval, so the load is even rather than in bursts.
            let mut next_at =
                start + Duration::from_secs_f64(args.interval * i as f64 / args.hosts as f64);
            let mut at = i % channels.len();
            while Instant::now() < until {
                let steady_from = start + Duration::from_secs_f64(args.interval);
                match session(
                    channels[at].clone(),
                    &host,
                    &args,
                    until,
                    steady_from,
                    &mut next_at,
                    &tally,
                )
                .await
                {
                    Ok(()) => break,
                    Err(e) => {
                        // The first few, so that a run that errs says why.
                        if tally.errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("{host}: {e}");
                        }
                        at = (at + 1) % channels.len();
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())?;
    }
    let took = start.elapsed().as_secs_f64();
    let mut lat = std::mem::take(&mut *tally.latencies.lock().expect("latencies"));
    lat.sort_unstable();
    let acked = tally.acked.load(Ordering::Relaxed);
    let offered = args.hosts as f64 / args.interval;
    println!(
        "{}",
        serde_json::json!({
            "hosts": args.hosts,
            "interval_s": args.interval,
            "changes": args.changes,
            "seconds": took,
            "offered_per_s": offered,
            "acked": acked,
            // Over the steady state: from one interval in (every host has started) to the end.
            "acked_per_s": tally.steady.load(Ordering::Relaxed) as f64
                / (args.seconds - args.interval),
            "p50_ms": percentile(&lat, 0.5) as f64 / 1000.0,
            "p99_ms": percentile(&lat, 0.99) as f64 / 1000.0,
            "max_ms": lat.last().copied().unwrap_or(0) as f64 / 1000.0,
            "errors": tally.errors.load(Ordering::Relaxed),
        })
    );
    Ok(())
}
