//! The deployment files in deploy/: the Kubernetes manifests parse as YAML and say what the docs
//! promise; the shipped nginx.conf fronts two real replicas, one of which is stopped with
//! SIGTERM in the middle of a load run, and no client request fails.
//!
//! nginx is Debian's `nginx` (tools/test-packages.txt; tools/test.sh installs it). Without it
//! the nginx test fails saying so, unless `RESNET_NGINX_TEST=skip`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn yaml_documents(path: &str) -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string(repo().join(path)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            <serde_yaml::Value as serde::Deserialize>::deserialize(d)
                .unwrap_or_else(|e| panic!("{path}: {e}"))
        })
        .collect()
}

fn kind<'a>(docs: &'a [serde_yaml::Value], kind: &str) -> &'a serde_yaml::Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn kubernetes_manifests_parse_and_probe_the_right_routes() {
    let deploy = yaml_documents("deploy/k8s/deployment.yaml");
    let d = kind(&deploy, "Deployment");
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.iter().any(|a| a.starts_with("--drain-s=")), "{args:?}");
    kind(&deploy, "Service");
    let hpa = yaml_documents("deploy/k8s/hpa.yaml");
    let h = kind(&hpa, "HorizontalPodAutoscaler");
    assert_eq!(h["spec"]["scaleTargetRef"]["name"], d["metadata"]["name"]);
    assert_eq!(h["spec"]["metrics"][0]["resource"]["name"], "cpu");
    let isvc = yaml_documents("deploy/k8s/inferenceservice.yaml");
    let p = &kind(&isvc, "InferenceService")["spec"]["predictor"]["containers"][0];
    assert_eq!(p["readinessProbe"]["httpGet"]["path"], "/v2/health/ready");
    let job = yaml_documents("deploy/k8s/indexed-job.yaml");
    let j = kind(&job, "Job");
    assert_eq!(j["spec"]["completionMode"], "Indexed");
    let script = j["spec"]["template"]["spec"]["containers"][0]["args"][0]
        .as_str()
        .unwrap();
    assert!(
        script.contains("--shard") && script.contains("--resume"),
        "{script}"
    );
    // Every flag the manifests pass exists: `resnet serve --help` lists it.
    let help = Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for a in args.iter().chain(
        p["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect::<Vec<_>>()
            .iter(),
    ) {
        if let Some(flag) = a.strip_prefix("--") {
            let name = flag.split('=').next().unwrap();
            assert!(
                help.contains(&format!("--{name}")),
                "resnet serve has no --{name}"
            );
        }
    }
}

fn synth() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_resnet"))
            .args(["weights", "synth", "--seed", "0", "--out"])
            .arg(dir.path().join("synth.safetensors"))
            .output()
            .unwrap();
        assert!(out.status.success());
        dir
    });
    Box::leak(dir.path().join("synth.safetensors").into_boxed_path())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Stops the process when the test ends, however it ends: SIGTERM first, so that nginx's
/// master stops its workers (a SIGKILLed master leaves an orphan worker holding the test's
/// stdout and stderr, which keeps a `cargo test | tee` pipeline open forever), then SIGKILL
/// after 5 s.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One request: (status, X-Upstream), or the error.
fn send(addr: SocketAddr, head: &str, body: &[u8]) -> Result<(u16, String), String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    s.write_all(body).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out);
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {text:?}"))?;
    let upstream = text
        .lines()
        .find_map(|l| l.strip_prefix("X-Upstream: "))
        .unwrap_or("")
        .to_string();
    Ok((status, upstream))
}

fn wait_ready(port: u16) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let started = Instant::now();
    while send(
        addr,
        "GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        b"",
    )
    .map(|r| r.0)
        != Ok(200)
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "port {port} never ready"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn replica(port: u16) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_resnet"))
            .arg("--quiet")
            .arg("serve")
            .arg("--weights")
            .arg(synth())
            .args(["--addr", &format!("127.0.0.1:{port}"), "--drain-s", "1"])
            .env_remove("RESNET_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn two_replicas_behind_nginx_lose_no_request_when_one_is_stopped_mid_load() {
    let nginx = match which("nginx") {
        Some(n) => n,
        None if std::env::var("RESNET_NGINX_TEST").as_deref() == Ok("skip") => {
            eprintln!("RESNET_NGINX_TEST=skip: nginx test skipped");
            return;
        }
        None => panic!("nginx not found: run tools/test.sh (installs Debian's nginx), or set RESNET_NGINX_TEST=skip"),
    };
    let (p1, p2, front) = (free_port(), free_port(), free_port());
    let mut first = replica(p1);
    let _second = replica(p2);
    wait_ready(p1);
    wait_ready(p2);
    // The shipped config, on this test's ports, in a scratch prefix.
    let prefix = tempfile::tempdir().unwrap();
    let conf = std::fs::read_to_string(repo().join("deploy/nginx/nginx.conf"))
        .unwrap()
        .replace("127.0.0.1:8081", &format!("127.0.0.1:{p1}"))
        .replace("127.0.0.1:8082", &format!("127.0.0.1:{p2}"))
        .replace(
            "listen 127.0.0.1:8080",
            &format!("listen 127.0.0.1:{front}"),
        );
    let conf_path = prefix.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let mut nginx_child = Command::new(nginx)
        .arg("-c")
        .arg(&conf_path)
        .arg("-p")
        .arg(prefix.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let nginx_err = nginx_child.stderr.take().unwrap();
    let nginx_log = Arc::new(Mutex::new(Vec::new()));
    let log_sink = Arc::clone(&nginx_log);
    std::thread::spawn(move || {
        for l in BufReader::new(nginx_err).lines().map_while(Result::ok) {
            log_sink.lock().unwrap().push(l);
        }
    });
    let _nginx = Proc(nginx_child);
    let front_addr = SocketAddr::from(([127, 0, 0, 1], front));
    let started = Instant::now();
    while send(
        front_addr,
        "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        b"",
    )
    .map(|r| r.0)
        != Ok(200)
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "nginx never answered: {:?}",
            nginx_log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let jpeg = std::fs::read(repo().join("testdata/images/tiny_7x5.jpg")).unwrap();
    let head = format!(
        "POST /v1/classify HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
        jpeg.len()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let upstreams = Arc::new(Mutex::new(Vec::<(Instant, String)>::new()));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failures, upstreams) = (
                stop.clone(),
                ok.clone(),
                failures.clone(),
                upstreams.clone(),
            );
            let (head, jpeg) = (head.clone(), jpeg.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match send(front_addr, &head, &jpeg) {
                        Ok((200, up)) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            upstreams.lock().unwrap().push((Instant::now(), up));
                        }
                        Ok((status, up)) => {
                            failures.lock().unwrap().push(format!("{status} from {up}"))
                        }
                        Err(e) => failures.lock().unwrap().push(e),
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let killed_at = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &first.0.id().to_string()])
        .status()
        .unwrap()
        .success());
    let exit = first.0.wait().unwrap();
    let stopped_at = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    assert!(exit.success(), "the stopped replica exited with {exit:?}");
    let failures = failures.lock().unwrap();
    let ok = ok.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        ok + failures.len(),
        &failures[..failures.len().min(10)]
    );
    let ups = upstreams.lock().unwrap();
    let first_addr = format!("127.0.0.1:{p1}");
    let second_addr = format!("127.0.0.1:{p2}");
    assert!(
        ups.iter()
            .any(|(t, u)| *t < killed_at && u.contains(&first_addr)),
        "replica 1 got no traffic before the stop"
    );
    assert!(
        ups.iter()
            .any(|(t, u)| *t < killed_at && u.contains(&second_addr)),
        "replica 2 got no traffic before the stop"
    );
    assert!(
        ups.iter().any(|(t, _)| *t > stopped_at),
        "no request after the stop"
    );
    eprintln!(
        "{ok} requests through nginx, none failed; replica 1 stopped {:.1} s after SIGTERM",
        (stopped_at - killed_at).as_secs_f64()
    );
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
