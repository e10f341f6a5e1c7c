//! A real Mosquitto broker on a free loopback port with a generated config (password required),
//! and `mosquitto_sub` subscribers, for the MQTT tests. Every process is killed when its guard is
//! dropped, also when the test panics. Shared by resnet-server's and resnet-cli's tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

pub const USER: &str = "resnet";
pub const PASSWORD: &str = "s3cret:pw";

/// `PROGRAM` on the PATH or in /usr/sbin (Debian installs the broker there); `None` when
/// `RESNET_MQTT_TEST=skip`; otherwise a missing program fails the test with what to do.
pub fn program(name: &str) -> Option<PathBuf> {
    if std::env::var("RESNET_MQTT_TEST").as_deref() == Ok("skip") {
        eprintln!("RESNET_MQTT_TEST=skip: not running the MQTT test");
        return None;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    match found {
        Some(p) => Some(p),
        None => panic!(
            "{name} is not installed: run tools/test.sh (it installs Debian's mosquitto and \
             mosquitto-clients), or set RESNET_MQTT_TEST=skip"
        ),
    }
}

/// Whether the broker and client programs are there (see [`program`]).
pub fn available() -> bool {
    [
        "mosquitto",
        "mosquitto_sub",
        "mosquitto_pub",
        "mosquitto_passwd",
    ]
    .iter()
    .all(|p| program(p).is_some())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The broker's folder (config, password file, log) and port; the process comes and goes.
pub struct Broker {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Broker {
    /// A config for `port` with a password file; not started yet.
    pub fn prepare(port: u16) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let passwd = dir.path().join("passwd");
        let ok = Command::new(program("mosquitto_passwd").unwrap())
            .args(["-b", "-c"])
            .arg(&passwd)
            .args([USER, PASSWORD])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success(), "mosquitto_passwd failed");
        // `user root`: a broker started by root would otherwise switch to the user `mosquitto`,
        // which cannot read this folder (ignored when the tests do not run as root).
        let config = format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n\
             persistence false\nuser root\nlog_dest file {}\n",
            passwd.display(),
            dir.path().join("mosquitto.log").display()
        );
        std::fs::write(dir.path().join("mosquitto.conf"), config).unwrap();
        Broker {
            port,
            dir,
            child: None,
        }
    }

    /// Prepares and starts a broker on a free port.
    pub fn start_new() -> Broker {
        let mut b = Broker::prepare(free_port());
        b.start();
        b
    }

    /// Starts the broker and waits (bounded) until it accepts connections.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "the broker is already running");
        let child = Command::new(program("mosquitto").unwrap())
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let end = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("mosquitto exited ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < end,
                "mosquitto not listening: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the broker at once (SIGKILL: no goodbye to its clients).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// The URL of `topic` on this broker, with the test's credentials.
    pub fn url(&self, topic: &str) -> String {
        format!(
            "mqtt://{USER}:{}@127.0.0.1:{}/{topic}",
            PASSWORD.replace(':', "%3A"),
            self.port
        )
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One message: its topic and payload.
#[derive(Clone, Debug)]
pub struct Message {
    pub topic: String,
    pub payload: String,
}

/// `mosquitto_sub` on `TOPIC/#` (the topic and everything under it), ready when returned.
pub struct Subscriber {
    child: Child,
    messages: Receiver<Message>,
    /// Messages that came while waiting for the probe (e.g. retained ones), not yet collected.
    backlog: Vec<Message>,
}

impl Subscriber {
    /// Subscribes and waits (bounded) until a probe published to `TOPIC/probe` comes back, so
    /// that nothing published afterwards can be missed.
    pub fn ready(broker: &Broker, topic: &str) -> Subscriber {
        let mut child = Command::new(program("mosquitto_sub").unwrap())
            .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
            .args(["-u", USER, "-P", PASSWORD, "-q", "1", "-v"])
            .args(["-t", &format!("{topic}/#")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, messages) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // `-v`: the topic, a space, the payload (topics here have no spaces).
                let (topic, payload) = line.split_once(' ').unwrap_or((line.as_str(), ""));
                let m = Message {
                    topic: topic.to_string(),
                    payload: payload.to_string(),
                };
                if tx.send(m).is_err() {
                    return;
                }
            }
        });
        let mut sub = Subscriber {
            child,
            messages,
            backlog: Vec::new(),
        };
        let mut backlog = Vec::new();
        let probe_topic = format!("{topic}/probe");
        let end = Instant::now() + Duration::from_secs(15);
        for attempt in 0.. {
            assert!(Instant::now() < end, "the subscriber never got a probe");
            let probe = format!("probe-{attempt}");
            let ok = Command::new(program("mosquitto_pub").unwrap())
                .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
                .args(["-u", USER, "-P", PASSWORD, "-q", "1"])
                .args(["-t", &probe_topic, "-m", &probe])
                .status()
                .unwrap();
            assert!(ok.success(), "mosquitto_pub failed");
            let got = sub.collect(Duration::from_millis(300), |m| {
                m.topic == probe_topic && m.payload == probe
            });
            let found = got.iter().any(|m| m.payload == probe);
            backlog.extend(got.into_iter().filter(|m| m.topic != probe_topic));
            if found {
                break;
            }
        }
        sub.backlog = backlog;
        sub
    }

    /// Messages until `done` says so for one of them, or `within` passes (not a failure).
    pub fn collect(
        &mut self,
        within: Duration,
        mut done: impl FnMut(&Message) -> bool,
    ) -> Vec<Message> {
        let end = Instant::now() + within;
        let mut out = std::mem::take(&mut self.backlog);
        if let Some(i) = out.iter().position(&mut done) {
            self.backlog = out.split_off(i + 1);
            return out;
        }
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.messages.recv_timeout(left) {
                Ok(m) => {
                    let stop = done(&m);
                    out.push(m);
                    if stop {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        out
    }

    /// The messages on exactly `topic` until `n` have come or `within` passes.
    pub fn on_topic(&mut self, topic: &str, n: usize, within: Duration) -> Vec<Message> {
        let mut count = 0;
        self.collect(within, |m| {
            if m.topic == topic {
                count += 1;
            }
            count >= n
        })
        .into_iter()
        .filter(|m| m.topic == topic)
        .collect()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
