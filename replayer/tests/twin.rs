//! The consumer API over real gRPC: Subscribe (history, then live, resumable, filtered),
//! GetState (latest, at a seq, at a time), Diff, ListHosts and Status.

mod common;

use common::{Running, Stream, batch, within};
use safetytwin_proto::{
    convert,
    v1::{self, ChangeKind, get_state_request::At, twin_client::TwinClient},
};
use tokio_stream::StreamExt;
use tonic::Code;

fn texts(state: &v1::HostState) -> Vec<String> {
    state
        .files
        .iter()
        .map(|f| f.state.as_ref().unwrap().text.clone())
        .collect()
}

#[tokio::test]
async fn subscribe_get_state_diff_and_listing() {
    let server = Running::start("twin", 1 << 20).await;
    let addr = server.addr;
    let mut twin = TwinClient::connect(format!("http://{addr}")).await.unwrap();

    // A subscriber that starts before anything is stored sees everything, in order, live.
    let mut all = twin
        .subscribe(v1::SubscribeRequest {
            host_id: "web-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (mut ingest, _) = Stream::open(addr, "web-1").await;
    for (seq, text) in [(1, "one"), (2, "two"), (3, "three")] {
        let mut b = batch("web-1", seq, text);
        b.window_end_unix_ns = seq as i64 * 1000;
        assert_eq!(ingest.send(b).await, Ok(seq));
    }
    for seq in 1..=3 {
        assert_eq!(within(all.next()).await.unwrap().unwrap().seq, seq);
    }

    // Resuming after seq 2 replays 3 from the history, then follows live.
    let mut resumed = twin
        .subscribe(v1::SubscribeRequest {
            host_id: "web-1".into(),
            from_seq: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(within(resumed.next()).await.unwrap().unwrap().seq, 3);
    let mut b4 = batch("web-1", 4, "four");
    b4.window_end_unix_ns = 4000;
    assert_eq!(ingest.send(b4).await, Ok(4));
    assert_eq!(within(resumed.next()).await.unwrap().unwrap().seq, 4);
    assert_eq!(within(all.next()).await.unwrap().unwrap().seq, 4);

    // Filters: only units (none here), so with skip_empty nothing arrives; a path prefix keeps
    // the file changes under it.
    let mut units_only = twin
        .subscribe(v1::SubscribeRequest {
            kinds: vec![ChangeKind::Units as i32],
            skip_empty: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut etc = twin
        .subscribe(v1::SubscribeRequest {
            path_prefix: "/etc".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for _ in 1..=4 {
        let b = within(etc.next()).await.unwrap().unwrap();
        assert_eq!(b.files.len(), 1);
        assert_eq!(b.files[0].path, "/etc/app.conf");
    }
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), units_only.next())
            .await
            .is_err(),
        "a units-only subscriber got a batch without unit changes"
    );

    let state = |at| {
        let mut twin = twin.clone();
        async move {
            twin.get_state(v1::GetStateRequest {
                host_id: "web-1".into(),
                at,
            })
            .await
        }
    };
    let latest = state(None).await.unwrap().into_inner();
    assert_eq!(
        (latest.seq, texts(latest.state.as_ref().unwrap())),
        (4, vec!["four".into()])
    );
    let at2 = state(Some(At::Seq(2))).await.unwrap().into_inner();
    assert_eq!(texts(at2.state.as_ref().unwrap()), ["two"]);
    let at_time = state(Some(At::UnixNs(3500))).await.unwrap().into_inner();
    assert_eq!(
        (at_time.seq, texts(at_time.state.as_ref().unwrap())),
        (3, vec!["three".into()])
    );
    assert_eq!(
        state(Some(At::Seq(9))).await.unwrap_err().code(),
        Code::NotFound
    );

    let diff = twin
        .diff(v1::DiffRequest {
            host_id: "web-1".into(),
            from_seq: 1,
            to_seq: 3,
        })
        .await
        .unwrap()
        .into_inner();
    let delta = convert::batch_from_wire(diff.delta.unwrap()).unwrap().delta;
    assert_eq!(delta.files.len(), 1);

    let hosts = twin
        .list_hosts(v1::ListHostsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hosts.hosts.len(), 1);
    assert_eq!(
        (
            hosts.hosts[0].last_seq,
            hosts.hosts[0].last_window_end_unix_ns
        ),
        (4, 4000)
    );
    let status = twin
        .status(v1::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((status.hosts, status.batches), (1, 4));

    drop((all, resumed, units_only, etc, ingest, twin));
    server.stop().await;
}

#[tokio::test]
async fn server_reflection_lists_the_services() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let server = Running::start("reflection", 1 << 20).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = within(responses.next())
        .await
        .unwrap()
        .unwrap()
        .message_response
    else {
        panic!("no service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in ["safetytwin.v1.Ingest", "safetytwin.v1.Twin"] {
        assert!(
            names.iter().any(|n| n == service),
            "{service} not in {names:?}"
        );
    }
    drop((responses, client));
    server.stop().await;
}
