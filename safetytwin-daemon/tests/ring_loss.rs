//! Privileged: with a deliberately tiny ring buffer and no draining during a burst, events are
//! lost, and every loss is counted: `received + dropped == produced` exactly.

mod common;

use std::process::Command;

use safetytwin_daemon::tracer::{Tracer, TracerConfig};

#[test]
fn every_lost_event_is_counted() {
    if !common::privileged("every_lost_event_is_counted") {
        return;
    }
    let mut tracer = Tracer::start(&TracerConfig {
        ring_bytes: 4096,
        ..TracerConfig::default()
    })
    .expect("start tracer");
    // ~6 exec records fit in one page; 300 processes produce ~900 records.
    for _ in 0..300 {
        Command::new("/bin/true").status().expect("run /bin/true");
    }
    tracer.detach();
    let mut counted = 0u64;
    tracer.drain(|_| counted += 1);
    let stats = tracer.stats().expect("read counters");
    eprintln!("{stats:?}");
    assert_eq!(stats.received, counted);
    assert!(
        stats.dropped > 0,
        "the burst should overflow a 4 KiB ring: {stats:?}"
    );
    assert!(stats.produced >= 900, "{stats:?}");
    assert_eq!(stats.received + stats.dropped, stats.produced, "{stats:?}");
}
