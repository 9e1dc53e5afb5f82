//! The agent's side of the agent channel (`moat_agent_protocol::channel`): one thread per host
//! connection, control requests answered from the process table, streams copied between
//! sockets and the processes' pipes or ptys.

use std::error::Error;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use moat_agent_protocol::channel::{
    read_frame, write_frame, ChannelSpec, Hello, ProcessSpec, Request, Response, StreamKind,
    MAIN_PROCESS, PROTOCOL_VERSION,
};
use moat_agent_protocol::LaunchSpec;

use crate::process::{Reaping, Table};
use crate::spawn::Workload;
use crate::tty;
use crate::user::{self, Credentials};
use crate::vsock;

/// Bytes copied per read on a stream: a pipe's default capacity.
const COPY_CHUNK: usize = 64 * 1024;

/// What every connection shares: the workload's launch, its processes, and whether the host
/// has asked to power off.
pub struct Agent {
    launch: LaunchSpec,
    creds: Credentials,
    start_ns: u64,
    table: Arc<Table>,
    /// Set once a `PowerOff` was answered.
    powered_off: Mutex<bool>,
    power_evt: Condvar,
}

impl Agent {
    /// The agent for the workload of `launch`, running as `creds`; `start_ns` is reported in
    /// `Ready`.
    pub fn new(launch: LaunchSpec, creds: Credentials, start_ns: u64, reaping: Reaping) -> Self {
        Self {
            launch,
            creds,
            start_ns,
            table: Table::new(reaping),
            powered_off: Mutex::new(false),
            power_evt: Condvar::new(),
        }
    }

    /// The processes.
    pub fn table(&self) -> &Arc<Table> {
        &self.table
    }

    /// Starts the workload as [`MAIN_PROCESS`].
    pub fn start_main(&self, stdio: ChannelSpec) -> Result<(), Box<dyn Error>> {
        let workload = Workload::new(&self.launch, self.creds.clone())?;
        self.table.spawn(&workload, stdio, true)?;
        Ok(())
    }

    /// Waits up to `timeout` for the host's `PowerOff` to be answered; false if it never came.
    pub fn wait_power_off(&self, timeout: Duration) -> bool {
        let powered_off = self
            .powered_off
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (powered_off, _) = self
            .power_evt
            .wait_timeout_while(powered_off, timeout, |done| !*done)
            .unwrap_or_else(PoisonError::into_inner);
        *powered_off
    }

    fn power_off_answered(&self) {
        *self
            .powered_off
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.power_evt.notify_all();
    }

    /// The answer to one request; `PowerOff` is answered once the workload has ended and the
    /// guest is torn down.
    fn answer(&self, request: Request) -> Response {
        let result = match request {
            Request::Exec(spec) => self
                .exec(&spec)
                .map(|process| Response::Started { process }),
            Request::Signal { process, signal } => self
                .table
                .signal(process, signal)
                .map(|()| Response::Done)
                .map_err(Into::into),
            Request::Resize {
                process,
                rows,
                cols,
            } => self
                .table
                .resize(process, rows, cols)
                .map(|()| Response::Done)
                .map_err(Into::into),
            Request::Wait { process } => self
                .table
                .wait(process)
                .map(|status| Response::Exited { process, status })
                .map_err(Into::into),
            Request::PowerOff => self.power_off().map(|()| Response::Done),
        };
        result.unwrap_or_else(|error| Response::Error {
            message: chain(error.as_ref()),
        })
    }

    /// Starts an exec. A command that cannot be run still starts: its process ends with 127 or
    /// 126 and says why on its stderr, as with `docker exec`.
    fn exec(&self, spec: &ProcessSpec) -> Result<u32, Box<dyn Error>> {
        let creds = match &spec.user {
            None => self.creds.clone(),
            Some(name) => {
                let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
                let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
                user::resolve(name, &passwd, &group).map_err(|e| e.to_string())?
            }
        };
        let workload = Workload::exec(&self.launch, spec, creds)?;
        let stdio = ChannelSpec {
            tty: spec.tty,
            stdin: spec.stdin,
            size: spec.size,
        };
        Ok(self.table.spawn(&workload, stdio, false)?)
    }

    /// `moat stop` after its grace period: a workload still running is killed first.
    fn power_off(&self) -> Result<(), Box<dyn Error>> {
        // An error only means it has ended already.
        let _ = self.table.signal(MAIN_PROCESS, libc::SIGKILL);
        self.table.wait(MAIN_PROCESS)?;
        Ok(())
    }
}

/// Accepts host connections on `listener` from a thread of its own, each served on a thread.
pub fn listen(agent: Arc<Agent>, listener: OwnedFd) -> io::Result<()> {
    std::thread::Builder::new()
        .name("channel".into())
        .spawn(move || loop {
            match vsock::accept(listener.as_fd()) {
                Ok(conn) => {
                    let agent = Arc::clone(&agent);
                    // Without a thread the connection is dropped, which the host sees as closed.
                    let _ = std::thread::Builder::new().spawn(move || serve(&agent, conn));
                }
                // Out of descriptors or memory: give the connections time to end.
                Err(e) if e.raw_os_error() != Some(libc::EINTR) => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(_) => {}
            }
        })?;
    Ok(())
}

/// Serves one host connection until it ends or breaks the protocol.
pub fn serve(agent: &Agent, mut conn: UnixStream) {
    match read_frame(&mut conn) {
        Ok(Hello::Control { version }) => control(agent, conn, version),
        Ok(Hello::Stream { process, stream }) => attach(agent, conn, process, stream),
        Err(_) => {}
    }
}

/// A control connection: `Ready`, then one response per request, in order.
fn control(agent: &Agent, mut conn: UnixStream, version: u32) {
    if version != PROTOCOL_VERSION {
        let message = format!(
            "the host speaks protocol version {version}, the agent version {PROTOCOL_VERSION}"
        );
        let _ = write_frame(&mut conn, &Response::Error { message });
        return;
    }
    let ready = Response::Ready {
        version: PROTOCOL_VERSION,
        agent_start_ns: agent.start_ns,
    };
    if write_frame(&mut conn, &ready).is_err() {
        return;
    }
    while let Ok(request) = read_frame::<_, Request>(&mut conn) {
        let powering_off = request == Request::PowerOff;
        let response = agent.answer(request);
        let written = write_frame(&mut conn, &response);
        if powering_off && response == Response::Done {
            agent.power_off_answered();
        }
        if written.is_err() {
            return;
        }
    }
}

/// A stream connection: copies between the socket and the process until one side ends. An
/// unknown process or a stream attached before is closed at once.
fn attach(agent: &Agent, conn: UnixStream, process: u32, kind: StreamKind) {
    let Some(end) = agent.table.attach(process, kind) else {
        return;
    };
    if kind == StreamKind::Stdin {
        receive_input(conn, end);
    } else {
        send_output(end, conn);
        agent.table.copied(process);
    }
}

/// Copies what the process prints to the host, then ends the stream. A host that went away
/// leaves the rest read and dropped, so the process never blocks on a full pipe.
fn send_output(output: OwnedFd, mut conn: UnixStream) {
    let mut host_gone = false;
    for_each_chunk(&mut File::from(output), |data| {
        if !host_gone {
            host_gone = conn.write_all(data).is_err();
        }
        true
    });
    let _ = conn.shutdown(Shutdown::Write);
}

/// Copies the host's input to the process. At its end a pipe closes, so the process reads end of
/// file; a terminal in canonical mode is sent its end-of-file character instead, twice when a
/// line was left unfinished (the first only hands over the partial line), as typing ^D would.
fn receive_input(mut conn: UnixStream, input: OwnedFd) {
    let mut input = File::from(input);
    let mut last = None;
    let mut process_gone = false;
    for_each_chunk(&mut conn, |data| {
        process_gone = input.write_all(data).is_err();
        last = data.last().copied();
        !process_gone
    });
    if process_gone {
        return;
    }
    if let Some(eof) = tty::canonical_eof_char(input.as_fd()) {
        let line_open = last.is_some_and(|b| b != b'\n' && b != eof);
        let marks = if line_open { 2 } else { 1 };
        let _ = input.write_all(&[eof; 2][..marks]);
    }
}

/// Reads `from` to its end, handing each chunk to `take` until it returns false. A read error
/// ends it too: EIO from a pty master means every slave descriptor is closed, the pty's end of
/// file.
fn for_each_chunk(from: &mut impl Read, mut take: impl FnMut(&[u8]) -> bool) {
    let mut buf = vec![0u8; COPY_CHUNK];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        match buf.get(..n) {
            Some(data) if take(data) => {}
            _ => return,
        }
    }
}

/// An error and its sources, for a person: "a: b: c".
fn chain(error: &dyn Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// An agent whose workload was never started, running execs as the test's own user.
    fn agent() -> Arc<Agent> {
        // SAFETY: getuid and getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let creds = Credentials {
            uid,
            gid,
            groups: Vec::new(),
            home: "/".into(),
        };
        let launch = LaunchSpec {
            argv: vec!["true".into()],
            env: vec!["FROM_LAUNCH=yes".into()],
            ..LaunchSpec::default()
        };
        Arc::new(Agent::new(launch, creds, 42, Reaping::EachChild))
    }

    /// A connection to `agent` that opens with `hello`, served on its own thread.
    fn connect(agent: &Arc<Agent>, hello: &Hello) -> UnixStream {
        let (host, guest) = UnixStream::pair().expect("a socket pair");
        let agent = Arc::clone(agent);
        std::thread::spawn(move || serve(&agent, guest));
        let mut host = host;
        write_frame(&mut host, hello).expect("the agent reads the hello");
        host
    }

    fn control(agent: &Arc<Agent>) -> UnixStream {
        let mut conn = connect(
            agent,
            &Hello::Control {
                version: PROTOCOL_VERSION,
            },
        );
        let ready: Response = read_frame(&mut conn).expect("Ready");
        assert!(matches!(
            ready,
            Response::Ready {
                version: PROTOCOL_VERSION,
                agent_start_ns: 42
            }
        ));
        conn
    }

    fn ask(conn: &mut UnixStream, request: Request) -> Response {
        write_frame(conn, &request).expect("the agent reads requests");
        read_frame(conn).expect("one response per request")
    }

    fn exec(conn: &mut UnixStream, script: &str, tty: bool, stdin: bool) -> u32 {
        let spec = ProcessSpec {
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            tty,
            stdin,
            size: tty.then_some((24, 80)),
            ..ProcessSpec::default()
        };
        match ask(conn, Request::Exec(spec)) {
            Response::Started { process } => process,
            other => panic!("exec answered {other:?}"),
        }
    }

    fn open_stream(agent: &Arc<Agent>, process: u32, stream: StreamKind) -> UnixStream {
        connect(agent, &Hello::Stream { process, stream })
    }

    fn read_stream(agent: &Arc<Agent>, process: u32, stream: StreamKind) -> String {
        let mut conn = open_stream(agent, process, stream);
        let mut output = String::new();
        conn.read_to_string(&mut output)
            .expect("the stream reads to its end");
        output
    }

    #[test]
    fn exec_output_and_status_reach_the_host() {
        let agent = agent();
        let mut conn = control(&agent);

        let process = exec(
            &mut conn,
            "echo $FROM_LAUNCH; echo oops >&2; exit 3",
            false,
            false,
        );

        assert_eq!(process, 1, "execs are numbered from 1");
        assert_eq!(read_stream(&agent, process, StreamKind::Stdout), "yes\n");
        assert_eq!(read_stream(&agent, process, StreamKind::Stderr), "oops\n");
        let exited = ask(&mut conn, Request::Wait { process });
        assert_eq!(exited, Response::Exited { process, status: 3 });
    }

    #[test]
    fn stdin_stream_reaches_the_process_and_its_end_is_end_of_file() {
        let agent = agent();
        let mut conn = control(&agent);
        let process = exec(&mut conn, "cat; echo done", false, true);

        let mut stdin = open_stream(&agent, process, StreamKind::Stdin);
        stdin.write_all(b"typed\n").expect("the agent reads stdin");
        drop(stdin);

        assert_eq!(
            read_stream(&agent, process, StreamKind::Stdout),
            "typed\ndone\n"
        );
    }

    #[test]
    fn a_signal_ends_the_process_with_128_plus_its_number() {
        let agent = agent();
        let mut conn = control(&agent);
        let process = exec(&mut conn, "exec sleep 60", false, false);

        let done = ask(
            &mut conn,
            Request::Signal {
                process,
                signal: libc::SIGTERM,
            },
        );

        assert_eq!(done, Response::Done);
        let exited = ask(&mut conn, Request::Wait { process });
        assert_eq!(
            exited,
            Response::Exited {
                process,
                status: 128 + 15
            }
        );
        let late = ask(
            &mut conn,
            Request::Signal {
                process,
                signal: libc::SIGTERM,
            },
        );
        assert!(matches!(late, Response::Error { .. }), "{late:?}");
    }

    #[test]
    fn a_missing_command_starts_and_exits_127() {
        let agent = agent();
        let mut conn = control(&agent);
        let spec = ProcessSpec {
            argv: vec!["moat-no-such-command".into()],
            ..ProcessSpec::default()
        };

        let Response::Started { process } = ask(&mut conn, Request::Exec(spec)) else {
            panic!("a missing command still starts");
        };

        let exited = ask(&mut conn, Request::Wait { process });
        assert_eq!(
            exited,
            Response::Exited {
                process,
                status: 127
            }
        );
        assert!(read_stream(&agent, process, StreamKind::Stderr).contains("cannot run"));
    }

    #[test]
    fn a_tty_process_gets_a_terminal_of_the_given_size() {
        let agent = agent();
        let mut conn = control(&agent);
        let process = exec(&mut conn, "test -t 0 && stty size", true, false);

        let output = read_stream(&agent, process, StreamKind::Stdout);

        assert_eq!(output, "24 80\r\n");
        assert_eq!(read_stream(&agent, process, StreamKind::Stderr), "");
        let exited = ask(&mut conn, Request::Wait { process });
        assert_eq!(exited, Response::Exited { process, status: 0 });
    }

    #[test]
    fn end_of_input_reaches_a_tty_process_even_mid_line() {
        let agent = agent();
        let mut conn = control(&agent);
        let process = exec(&mut conn, "cat >/dev/null; echo cat-ended", true, true);
        let mut stdin = open_stream(&agent, process, StreamKind::Stdin);
        stdin
            .write_all(b"half a line")
            .expect("the agent reads stdin");
        drop(stdin);

        let mut stdout = open_stream(&agent, process, StreamKind::Stdout);
        // Without end of file, cat would wait for ever: fail instead of hanging.
        stdout
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("a timeout");
        let mut output = String::new();
        stdout
            .read_to_string(&mut output)
            .expect("cat saw end of file and the stream ended");
        assert!(output.ends_with("cat-ended\r\n"), "{output:?}");
        let exited = ask(&mut conn, Request::Wait { process });
        assert_eq!(exited, Response::Exited { process, status: 0 });
    }

    #[test]
    fn resize_of_a_process_without_tty_is_an_error() {
        let agent = agent();
        let mut conn = control(&agent);
        let process = exec(&mut conn, "exec sleep 60", false, false);

        let answer = ask(
            &mut conn,
            Request::Resize {
                process,
                rows: 1,
                cols: 1,
            },
        );

        assert!(matches!(answer, Response::Error { .. }), "{answer:?}");
        ask(
            &mut conn,
            Request::Signal {
                process,
                signal: libc::SIGKILL,
            },
        );
    }

    #[test]
    fn a_stream_attaches_once() {
        let agent = agent();
        let mut conn = control(&agent);
        let process = exec(&mut conn, "echo once", false, false);

        let first = read_stream(&agent, process, StreamKind::Stdout);
        let second = read_stream(&agent, process, StreamKind::Stdout);

        assert_eq!((first.as_str(), second.as_str()), ("once\n", ""));
    }

    #[test]
    fn waiting_on_an_unknown_process_is_an_error() {
        let agent = agent();
        let mut conn = control(&agent);

        let answer = ask(&mut conn, Request::Wait { process: 99 });

        assert!(matches!(answer, Response::Error { message } if message.contains("99")));
    }

    #[test]
    fn a_malformed_frame_closes_only_its_connection() {
        let agent = agent();
        let mut conn = control(&agent);

        conn.write_all(&3u32.to_be_bytes())
            .expect("the agent reads");
        conn.write_all(b"{x]").expect("the agent reads");
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest)
            .expect("the agent closes the connection");

        assert!(rest.is_empty());
        let mut again = control(&agent);
        let answer = ask(&mut again, Request::Wait { process: 7 });
        assert!(matches!(answer, Response::Error { .. }));
    }

    #[test]
    fn another_protocol_version_is_refused() {
        let agent = agent();
        let mut conn = connect(
            &agent,
            &Hello::Control {
                version: PROTOCOL_VERSION + 1,
            },
        );

        let answer: Response = read_frame(&mut conn).expect("an answer");

        assert!(matches!(answer, Response::Error { .. }), "{answer:?}");
        assert!(matches!(
            read_frame::<_, Response>(&mut conn),
            Err(moat_agent_protocol::channel::FrameError::Closed)
        ));
    }

    #[test]
    fn power_off_kills_a_running_workload_and_waits_for_its_teardown() {
        let agent = agent();
        let stdio = ChannelSpec::default();
        let workload = Workload::exec(
            &agent.launch,
            &ProcessSpec {
                argv: vec!["sleep".into(), "60".into()],
                ..ProcessSpec::default()
            },
            agent.creds.clone(),
        )
        .expect("a valid workload");
        agent
            .table
            .spawn(&workload, stdio, true)
            .expect("sleep starts");
        let mut conn = control(&agent);
        let teardown = {
            let agent = Arc::clone(&agent);
            std::thread::spawn(move || {
                let status = agent.table.wait_ended(MAIN_PROCESS);
                agent.table.publish(MAIN_PROCESS);
                status
            })
        };

        let answer = ask(&mut conn, Request::PowerOff);

        assert_eq!(answer, Response::Done);
        assert_eq!(teardown.join().expect("no panic").expect("known"), 128 + 9);
        let start = Instant::now();
        assert!(agent.wait_power_off(Duration::from_secs(5)));
        assert!(start.elapsed() < Duration::from_secs(1));
    }
}
