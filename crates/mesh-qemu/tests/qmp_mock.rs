//! The QMP client against a scripted server that misbehaves the ways QEMU may: a late
//! greeting, events before and between replies, replies out of order, errors, and a
//! connection cut in the middle of a reply.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mesh_qemu::{Qmp, QmpError};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::time::timeout;

/// Every test must end well within this; a hang is a failure, not a stuck suite.
const LIMIT: Duration = Duration::from_secs(10);

const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": ""}, "capabilities": ["oob"]}}"#;

/// The server's side of one connection.
struct Peer {
    lines: Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
}

impl Peer {
    fn new(stream: UnixStream) -> Peer {
        let (read, writer) = stream.into_split();
        Peer { lines: BufReader::new(read).lines(), writer }
    }

    async fn send_raw(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).await.expect("mock write");
    }

    async fn send(&mut self, message: Value) {
        self.send_raw(&format!("{message}\r\n")).await;
    }

    async fn event(&mut self, name: &str) {
        let event = json!({
            "event": name,
            "data": {"reason": "test"},
            "timestamp": {"seconds": 1700000000, "microseconds": 5},
        });
        self.send(event).await;
    }

    /// Reads the next command and returns its name and id.
    async fn command(&mut self) -> (String, Value) {
        let line = self.lines.next_line().await.expect("mock read").expect("a command line");
        let message: Value = serde_json::from_str(&line).expect("client sends JSON");
        let id = message.get("id").cloned().expect("every command carries an id");
        (message["execute"].as_str().expect("execute is a string").to_owned(), id)
    }

    async fn reply(&mut self, id: &Value, value: Value) {
        self.send(json!({"return": value, "id": id})).await;
    }
}

fn socket_in(dir: &Path) -> PathBuf {
    dir.join("qmp.sock")
}

/// Accepts one connection and runs `script` on it.
fn serve<F, Fut>(socket: &Path, script: F) -> tokio::task::JoinHandle<()>
where
    F: FnOnce(Peer) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = UnixListener::bind(socket).expect("bind mock socket");
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        script(Peer::new(stream)).await;
    })
}

#[tokio::test]
async fn late_greeting_and_events_before_every_reply_are_sorted_out() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let socket = socket_in(dir.path());
    let server = serve(&socket, |mut peer| async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        peer.send_raw(&format!("{GREETING}\r\n")).await;

        let (name, id) = peer.command().await;
        assert_eq!(name, "qmp_capabilities");
        peer.event("EARLY_ONE").await;
        peer.event("EARLY_TWO").await;
        peer.reply(&id, json!({})).await;

        // Two commands in flight: answered in reverse order with events in between.
        let first = peer.command().await;
        let second = peer.command().await;
        let (status_id, block_id) =
            if first.0 == "query-status" { (first.1, second.1) } else { (second.1, first.1) };
        peer.event("BETWEEN").await;
        peer.reply(
            &block_id,
            json!([{"device": "drive0", "locked": false, "removable": false,
            "inserted": {"file": "/m/n1.qcow2", "ro": false, "drv": "qcow2",
                         "backing_file": "/m/base.raw"}}]),
        )
        .await;
        peer.event("STOP").await;
        peer.reply(&status_id, json!({"status": "paused", "singlestep": false, "running": false}))
            .await;

        let (name, id) = peer.command().await;
        assert_eq!(name, "set_link");
        peer.send(json!({"error": {"class": "DeviceNotFound", "desc": "no nic9"}, "id": id})).await;
        // A stray reply nobody asked for must not disturb anything.
        peer.send(json!({"return": {}, "id": 987654})).await;
        let (name, id) = peer.command().await;
        assert_eq!(name, "cont");
        peer.reply(&id, json!({})).await;
        peer.event("RESUME").await;
        // Hold the connection until the client is done.
        let _ = peer.lines.next_line().await;
    });

    let test = async {
        let started = Instant::now();
        let qmp = Qmp::connect(&socket, Duration::from_secs(5), || true).await.expect("connect");
        assert!(started.elapsed() >= Duration::from_millis(300), "waited for the greeting");
        let mut events = qmp.events();

        let (status, blocks) = tokio::join!(qmp.query_status(), qmp.query_block());
        let status = status.expect("query-status");
        assert_eq!((status.status.as_str(), status.running), ("paused", false));
        let blocks = blocks.expect("query-block");
        assert_eq!(blocks.len(), 1);
        let inserted = blocks[0].inserted.as_ref().expect("medium");
        assert_eq!(inserted.backing_file.as_deref(), Some("/m/base.raw"));

        let err = qmp.set_link("nic9", false).await.expect_err("refused by the server");
        match err {
            QmpError::Command { command, class, desc } => {
                assert_eq!(
                    (command.as_str(), class.as_str(), desc.as_str()),
                    ("set_link", "DeviceNotFound", "no nic9")
                );
            }
            other => panic!("unexpected error {other:?}"),
        }
        qmp.cont().await.expect("cont");

        let mut names = Vec::new();
        while names.len() < 5 {
            let event = events.recv().await.expect("event");
            if names.is_empty() {
                assert_eq!(event.data["reason"], "test");
                assert_eq!(event.timestamp.map(|t| t.seconds), Some(1700000000));
            }
            names.push(event.event);
        }
        assert_eq!(names, ["EARLY_ONE", "EARLY_TWO", "BETWEEN", "STOP", "RESUME"]);
        drop(qmp);
    };
    timeout(LIMIT, test).await.expect("no hang");
    timeout(LIMIT, server).await.expect("server finished").expect("server assertions");
}

#[tokio::test]
async fn connection_closed_mid_reply_fails_the_waiting_command_and_all_later_ones() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let socket = socket_in(dir.path());
    let server = serve(&socket, |mut peer| async move {
        peer.send_raw(&format!("{GREETING}\n")).await;
        let (_, id) = peer.command().await;
        peer.reply(&id, json!({})).await;
        let (name, id) = peer.command().await;
        assert_eq!(name, "query-status");
        peer.send_raw(&format!(r#"{{"return": {{"status": "runn", "id": {id}"#)).await;
        // Dropping the peer closes the connection half-way through the reply.
    });

    let test = async {
        let qmp = Qmp::connect(&socket, Duration::from_secs(5), || true).await.expect("connect");
        let err = qmp.query_status().await.expect_err("cut reply");
        assert!(
            matches!(err, QmpError::Closed { ref command } if command == "query-status"),
            "{err:?}"
        );
        assert!(qmp.is_closed());
        let err = qmp.quit().await.expect_err("closed connection");
        assert!(matches!(err, QmpError::Closed { .. }), "{err:?}");
    };
    timeout(LIMIT, test).await.expect("no hang");
    server.await.expect("server assertions");
}

#[tokio::test]
async fn silent_server_times_out_the_command_without_closing() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let socket = socket_in(dir.path());
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let server = serve(&socket, |mut peer| async move {
        peer.send_raw(&format!("{GREETING}\n")).await;
        let (_, id) = peer.command().await;
        peer.reply(&id, json!({})).await;
        let _ignored = peer.command().await;
        let (_, id) = peer.command().await;
        peer.reply(&id, json!({"status": "running", "running": true})).await;
        let _ = done_rx.await;
    });

    let test = async {
        let qmp = Qmp::connect(&socket, Duration::from_secs(5), || true).await.expect("connect");
        qmp.set_command_timeout(Duration::from_millis(200));
        let err = qmp.system_powerdown().await.expect_err("never answered");
        assert!(matches!(err, QmpError::Timeout { .. }), "{err:?}");
        qmp.set_command_timeout(Duration::from_secs(5));
        let status = qmp.query_status().await.expect("still usable");
        assert!(status.running);
    };
    timeout(LIMIT, test).await.expect("no hang");
    let _ = done_tx.send(());
    server.await.expect("server assertions");
}

#[tokio::test]
async fn connect_waits_for_a_socket_that_appears_later() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let socket = socket_in(dir.path());
    let late = socket.clone();
    let server = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let listener = UnixListener::bind(&late).expect("bind");
        let (stream, _) = listener.accept().await.expect("accept");
        let mut peer = Peer::new(stream);
        peer.send_raw(&format!("{GREETING}\n")).await;
        let (_, id) = peer.command().await;
        peer.reply(&id, json!({})).await;
        let _ = peer.lines.next_line().await;
    });
    let qmp = timeout(LIMIT, Qmp::connect(&socket, Duration::from_secs(5), || true))
        .await
        .expect("no hang")
        .expect("connect once the socket exists");
    drop(qmp);
    server.await.expect("server");
}

#[tokio::test]
async fn connect_gives_up_early_when_the_process_is_gone_and_late_when_nobody_listens() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let socket = socket_in(dir.path());

    let started = Instant::now();
    let err = Qmp::connect(&socket, Duration::from_secs(30), || false).await.expect_err("dead");
    assert!(matches!(err, QmpError::ProcessExited { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(1), "gave up early");

    let started = Instant::now();
    let err = Qmp::connect(&socket, Duration::from_millis(300), || true).await.expect_err("none");
    assert!(matches!(err, QmpError::ConnectTimeout { .. }), "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_greeting_that_is_not_qmp_or_never_comes_is_refused() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let socket = socket_in(dir.path());
    let server = serve(&socket, |mut peer| async move {
        peer.send_raw("{\"hello\": 1}\n").await;
        let _ = peer.lines.next_line().await;
    });
    let err = timeout(LIMIT, Qmp::connect(&socket, Duration::from_secs(5), || true))
        .await
        .expect("no hang")
        .expect_err("not QMP");
    assert!(matches!(err, QmpError::ReadGreeting { .. }), "{err:?}");
    server.await.expect("server");

    let silent = dir.path().join("silent.sock");
    let server = serve(&silent, |peer| async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        drop(peer);
    });
    let err = timeout(LIMIT, Qmp::connect(&silent, Duration::from_millis(400), || true))
        .await
        .expect("no hang")
        .expect_err("no greeting");
    assert!(matches!(err, QmpError::ReadGreeting { .. }), "{err:?}");
    server.abort();
}
