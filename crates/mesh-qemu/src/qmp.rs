//! An async QMP client: one long-lived connection per VM, every command with an id, events
//! routed apart from replies.
//!
//! A reader task owns the receiving half of the socket. Each line it reads is either an
//! event (sent to every [`Qmp::events`] receiver) or a reply, handed to the command that
//! carries the reply's id. An event may arrive at any time, even before the reply to
//! `qmp_capabilities`. When the connection closes, every command still waiting fails with
//! [`QmpError::Closed`] and later commands fail at once.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot};
use tokio::time::Instant;

/// How long a command waits for its reply unless told otherwise.
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Events kept for a receiver that falls behind.
const EVENT_BUFFER: usize = 256;

/// Failures of the QMP client.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// Connecting to the socket failed for a reason that waiting will not cure.
    #[error("cannot connect to QMP socket {socket}")]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// QEMU did not listen on the socket before the timeout.
    #[error("QMP socket {socket} did not accept a connection within {timeout:?}")]
    ConnectTimeout {
        /// The socket.
        socket: PathBuf,
        /// How long we tried.
        timeout: Duration,
        /// The last connection error.
        #[source]
        source: io::Error,
    },
    /// The QEMU process exited before its QMP socket accepted a connection.
    #[error("QEMU exited before its QMP socket {socket} accepted a connection")]
    ProcessExited {
        /// The socket.
        socket: PathBuf,
    },
    /// The greeting could not be read, was not a QMP greeting or did not come in time.
    #[error("no valid QMP greeting on {socket}")]
    ReadGreeting {
        /// The socket.
        socket: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Writing a command to the socket failed.
    #[error("cannot send QMP command {command}")]
    Send {
        /// The command.
        command: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The connection closed (QEMU exited or broke the stream) before the reply arrived.
    #[error("QMP connection closed before the reply to {command}")]
    Closed {
        /// The command.
        command: String,
    },
    /// The reply did not arrive in time.
    #[error("no reply to QMP command {command} within {timeout:?}")]
    Timeout {
        /// The command.
        command: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// QEMU answered the command with an error.
    #[error("QEMU refused QMP command {command}: {class}: {desc}")]
    Command {
        /// The command.
        command: String,
        /// QEMU's error class (`GenericError`, `DeviceNotFound`, ...).
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// The reply had an unexpected shape.
    #[error("cannot decode the reply to QMP command {command}")]
    Decode {
        /// The command.
        command: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// An asynchronous QMP event, such as `SHUTDOWN`, `STOP` or `RESUME`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct QmpEvent {
    /// Event name.
    pub event: String,
    /// Event data (`null` when QEMU sends none).
    #[serde(default)]
    pub data: Value,
    /// When QEMU emitted it: seconds and microseconds since the Unix epoch.
    #[serde(default)]
    pub timestamp: Option<QmpTimestamp>,
}

/// The timestamp of a [`QmpEvent`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct QmpTimestamp {
    /// Seconds since the Unix epoch.
    pub seconds: i64,
    /// Microseconds within the second.
    pub microseconds: i64,
}

/// The answer to `query-status`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RunState {
    /// QEMU's run state: `running`, `paused`, `prelaunch`, `shutdown`, `internal-error`, ...
    pub status: String,
    /// Whether guest CPUs are executing.
    pub running: bool,
}

/// One entry of `query-block`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BlockInfo {
    /// Block device name (`drive0`, ... for drives from [`crate::VmSpec`]).
    pub device: String,
    /// The qdev path or id of the device the drive is attached to.
    #[serde(default)]
    pub qdev: Option<String>,
    /// Whether the medium is removable.
    #[serde(default)]
    pub removable: bool,
    /// Whether the medium is locked.
    #[serde(default)]
    pub locked: bool,
    /// The medium, if one is inserted.
    #[serde(default)]
    pub inserted: Option<BlockInserted>,
}

/// The medium of a [`BlockInfo`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BlockInserted {
    /// The image file (QEMU may show a JSON description for complex graphs).
    pub file: String,
    /// Whether it is attached read-only.
    pub ro: bool,
    /// The format driver (`qcow2`, `raw`, ...).
    pub drv: String,
    /// The backing file as recorded in the image, if any.
    #[serde(default)]
    pub backing_file: Option<String>,
}

/// A connection to QEMU's monitor. Cheap to clone; all clones share the connection, which
/// closes when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Qmp {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    socket: PathBuf,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    shared: Arc<Shared>,
    events: broadcast::Sender<QmpEvent>,
    /// The receiver that has seen every event since the greeting, for the first caller of
    /// [`Qmp::events`].
    first_events: Mutex<Option<broadcast::Receiver<QmpEvent>>>,
    next_id: AtomicU64,
    command_timeout: Mutex<Duration>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// What a waiting command receives: the `return` value or QEMU's error class and text.
type Reply = Result<Value, (String, String)>;

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<PendingState>,
}

#[derive(Debug, Default)]
struct PendingState {
    waiting: HashMap<u64, oneshot::Sender<Reply>>,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, PendingState> {
        // The lock guards plain map operations that cannot panic half-way; recover the
        // state if some unrelated panic poisoned it anyway.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks the connection closed; dropping the senders wakes every waiting command.
    fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.waiting.clear();
    }
}

impl Qmp {
    /// Connects to the QMP socket at `socket`, retrying while nobody listens yet, until
    /// `timeout` passes or `alive()` returns false (pass a check that the QEMU process still
    /// runs); then reads the greeting and negotiates capabilities.
    pub async fn connect(
        socket: &Path,
        timeout: Duration,
        alive: impl Fn() -> bool,
    ) -> Result<Qmp, QmpError> {
        let deadline = Instant::now() + timeout;
        let stream = connect_with_retry(socket, timeout, deadline, &alive).await?;
        let (read_half, write_half) = stream.into_split();
        let mut reader = BufReader::new(read_half);
        read_greeting(&mut reader, socket, deadline).await?;

        let shared = Arc::new(Shared::default());
        let (events, first_events) = broadcast::channel(EVENT_BUFFER);
        let reader =
            tokio::spawn(read_messages(reader, Arc::clone(&shared), events.clone(), socket.into()));
        let qmp = Qmp {
            inner: Arc::new(Inner {
                socket: socket.to_owned(),
                writer: tokio::sync::Mutex::new(write_half),
                shared,
                events,
                first_events: Mutex::new(Some(first_events)),
                next_id: AtomicU64::new(1),
                command_timeout: Mutex::new(DEFAULT_COMMAND_TIMEOUT),
                reader,
            }),
        };
        qmp.execute("qmp_capabilities", None).await?;
        tracing::debug!(socket = %socket.display(), "QMP connected");
        Ok(qmp)
    }

    /// The socket this client is connected to.
    pub fn socket(&self) -> &Path {
        &self.inner.socket
    }

    /// Sets how long later commands wait for their reply (60 s by default).
    pub fn set_command_timeout(&self, timeout: Duration) {
        *self.inner.command_timeout.lock().unwrap_or_else(|p| p.into_inner()) = timeout;
    }

    /// Whether the connection has closed (QEMU exited or closed the socket).
    pub fn is_closed(&self) -> bool {
        self.inner.shared.lock().closed
    }

    /// A receiver of events. The first call gets every event since the greeting (up to 256
    /// of them, even those that came before the reply to `qmp_capabilities`), so nothing
    /// between [`Qmp::connect`] and subscribing is lost; later calls get the events that
    /// arrive from then on.
    pub fn events(&self) -> broadcast::Receiver<QmpEvent> {
        let mut first = self.inner.first_events.lock().unwrap_or_else(|p| p.into_inner());
        first.take().unwrap_or_else(|| self.inner.events.subscribe())
    }

    /// Runs a QMP command and returns its `return` value.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(qmp: &mesh_qemu::Qmp) -> Result<(), mesh_qemu::QmpError> {
    /// let version = qmp.execute("query-version", None).await?;
    /// println!("QEMU {}", version["qemu"]["major"]);
    /// # Ok(()) }
    /// ```
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        {
            let mut state = self.inner.shared.lock();
            if state.closed {
                return Err(QmpError::Closed { command: command.to_owned() });
            }
            state.waiting.insert(id, sender);
        }

        let mut message = json!({ "execute": command, "id": id });
        if let Some(arguments) = arguments {
            message["arguments"] = arguments;
        }
        let mut line = message.to_string();
        line.push('\n');
        let written = {
            let mut writer = self.inner.writer.lock().await;
            writer.write_all(line.as_bytes()).await
        };
        if let Err(source) = written {
            self.inner.shared.lock().waiting.remove(&id);
            if matches!(source.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset) {
                return Err(QmpError::Closed { command: command.to_owned() });
            }
            return Err(QmpError::Send { command: command.to_owned(), source });
        }

        let timeout = *self.inner.command_timeout.lock().unwrap_or_else(|p| p.into_inner());
        match tokio::time::timeout(timeout, receiver).await {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err((class, desc)))) => {
                Err(QmpError::Command { command: command.to_owned(), class, desc })
            }
            Ok(Err(_)) => Err(QmpError::Closed { command: command.to_owned() }),
            Err(_) => {
                self.inner.shared.lock().waiting.remove(&id);
                Err(QmpError::Timeout { command: command.to_owned(), timeout })
            }
        }
    }

    async fn execute_unit(&self, command: &str, arguments: Option<Value>) -> Result<(), QmpError> {
        self.execute(command, arguments).await.map(drop)
    }

    /// `query-status`: QEMU's run state.
    pub async fn query_status(&self) -> Result<RunState, QmpError> {
        let value = self.execute("query-status", None).await?;
        serde_json::from_value(value)
            .map_err(|source| QmpError::Decode { command: "query-status".into(), source })
    }

    /// `stop`: pauses the guest CPUs.
    pub async fn stop(&self) -> Result<(), QmpError> {
        self.execute_unit("stop", None).await
    }

    /// `cont`: resumes the guest CPUs (also starts a VM launched with `-S`).
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.execute_unit("cont", None).await
    }

    /// `system_powerdown`: presses the ACPI power button; the guest decides what to do.
    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.execute_unit("system_powerdown", None).await
    }

    /// `system_reset`: resets the machine, like the reset button.
    pub async fn system_reset(&self) -> Result<(), QmpError> {
        self.execute_unit("system_reset", None).await
    }

    /// `quit`: QEMU exits at once, without asking the guest.
    pub async fn quit(&self) -> Result<(), QmpError> {
        self.execute_unit("quit", None).await
    }

    /// `set_link`: sets the link of a NIC or netdev (`nic0` or `net0`, see
    /// [`crate::VmSpec::nic_id`]) up or down, as if a cable were plugged or pulled.
    pub async fn set_link(&self, name: &str, up: bool) -> Result<(), QmpError> {
        self.execute_unit("set_link", Some(json!({ "name": name, "up": up }))).await
    }

    /// `query-block`: the block devices and their media.
    pub async fn query_block(&self) -> Result<Vec<BlockInfo>, QmpError> {
        let value = self.execute("query-block", None).await?;
        serde_json::from_value(value)
            .map_err(|source| QmpError::Decode { command: "query-block".into(), source })
    }
}

async fn connect_with_retry(
    socket: &Path,
    timeout: Duration,
    deadline: Instant,
    alive: &impl Fn() -> bool,
) -> Result<UnixStream, QmpError> {
    let mut pause = Duration::from_millis(5);
    loop {
        match UnixStream::connect(socket).await {
            Ok(stream) => return Ok(stream),
            // Not created yet, or a stale socket of an earlier QEMU: QEMU may still come up.
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                if !alive() {
                    return Err(QmpError::ProcessExited { socket: socket.to_owned() });
                }
                if Instant::now() + pause > deadline {
                    return Err(QmpError::ConnectTimeout {
                        socket: socket.to_owned(),
                        timeout,
                        source: error,
                    });
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(source) => return Err(QmpError::Connect { socket: socket.to_owned(), source }),
        }
    }
}

async fn read_greeting(
    reader: &mut BufReader<OwnedReadHalf>,
    socket: &Path,
    deadline: Instant,
) -> Result<(), QmpError> {
    let error = |source| QmpError::ReadGreeting { socket: socket.to_owned(), source };
    let mut line = Vec::new();
    match tokio::time::timeout_at(deadline, reader.read_until(b'\n', &mut line)).await {
        Err(_) => return Err(error(io::Error::from(io::ErrorKind::TimedOut))),
        Ok(Err(source)) => return Err(error(source)),
        Ok(Ok(_)) if !line.ends_with(b"\n") => {
            return Err(error(io::Error::from(io::ErrorKind::UnexpectedEof)))
        }
        Ok(Ok(_)) => {}
    }
    let greeting: Value =
        serde_json::from_slice(&line).map_err(|source| error(io::Error::other(source)))?;
    if greeting.get("QMP").is_none() {
        return Err(error(io::Error::new(io::ErrorKind::InvalidData, "no \"QMP\" member")));
    }
    Ok(())
}

/// The reader task: routes each message until the connection ends, then closes `shared`.
async fn read_messages(
    mut reader: BufReader<OwnedReadHalf>,
    shared: Arc<Shared>,
    events: broadcast::Sender<QmpEvent>,
    socket: PathBuf,
) {
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) => break,
            Ok(_) if !line.ends_with(b"\n") => {
                tracing::debug!(socket = %socket.display(), "QMP connection closed mid-message");
                break;
            }
            Ok(_) => route(&line, &shared, &events, &socket),
            Err(error) => {
                tracing::debug!(socket = %socket.display(), %error, "QMP read failed");
                break;
            }
        }
    }
    shared.close();
}

fn route(line: &[u8], shared: &Shared, events: &broadcast::Sender<QmpEvent>, socket: &Path) {
    let message: Value = match serde_json::from_slice(line) {
        Ok(message) => message,
        Err(error) => {
            tracing::warn!(socket = %socket.display(), %error, "ignoring malformed QMP message");
            return;
        }
    };
    if message.get("event").is_some() {
        match serde_json::from_value::<QmpEvent>(message) {
            // No receiver is not an error: nobody asked for events yet.
            Ok(event) => drop(events.send(event)),
            Err(error) => tracing::warn!(%error, "ignoring malformed QMP event"),
        }
        return;
    }
    let Some(id) = message.get("id").and_then(Value::as_u64) else {
        tracing::warn!(socket = %socket.display(), %message, "ignoring QMP message without id");
        return;
    };
    let reply = if let Some(error) = message.get("error") {
        let text = |key: &str| error.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
        Err((text("class"), text("desc")))
    } else {
        Ok(message.get("return").cloned().unwrap_or(Value::Null))
    };
    match shared.lock().waiting.remove(&id) {
        // The command may have timed out and gone away meanwhile.
        Some(sender) => drop(sender.send(reply)),
        None => tracing::debug!(id, "QMP reply for a command nobody waits for"),
    }
}
