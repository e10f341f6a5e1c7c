//! Binding, the accept loop, graceful shutdown, and the blocking entry point the CLI calls.

use crate::batcher::{BatchSettings, Batcher};
use crate::budget::{BodyBudget, DecodeBudget};
use crate::config::Config;
use crate::declared_length::DeclaredLength;
use crate::error::ServerError;
use crate::history::{Entry, History};
use crate::metrics::Metrics;
use crate::model::ServedModel;
use crate::routes::{handle, AppState};
use crate::write_deadline::WriteDeadline;
use hyper::header::{HeaderValue, CONNECTION};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulConnection, GracefulShutdown};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A running server. Dropping it also shuts the server down.
pub struct Server {
    addr: SocketAddr,
    deepstack_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    state: Arc<AppState>,
}

impl Server {
    /// Binds `config.addr` (and the DeepStack port, when set), starts the inference thread
    /// (which warms the model up) and the accept loop. Must be called inside a tokio runtime.
    pub async fn start(config: Config, model: ServedModel) -> Result<Server, ServerError> {
        let (listener, addr) = bind(config.addr).await?;
        let mut listeners = vec![listener];
        let deepstack_addr = match config.deepstack_port {
            None => None,
            Some(port) => {
                let (listener, addr) = bind(SocketAddr::new(config.addr.ip(), port)).await?;
                listeners.push(listener);
                Some(addr)
            }
        };
        let state = AppState::start(config, model)?;
        crate::watch::start(&state)?;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listeners, Arc::clone(&state), stopped));
        Ok(Server {
            addr,
            deepstack_addr,
            stop: Some(stop),
            task,
            state,
        })
    }

    /// The address it listens on (with the real port when `:0` was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The second listener's address (`--deepstack-port`), when there is one.
    pub fn deepstack_addr(&self) -> Option<SocketAddr> {
        self.deepstack_addr
    }

    /// True once the model is warmed up.
    pub fn is_ready(&self) -> bool {
        self.state.batcher.is_ready()
    }

    /// Waits until the model is warmed up.
    pub async fn wait_ready(&self) {
        while !self.is_ready() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops accepting, lets in-flight requests finish (up to the configured grace period),
    /// closes idle connections, then stops the inference thread.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
        if let Some(mqtt) = self.state.mqtt.clone() {
            // The last recognitions and `offline` reach the broker if it is there.
            let _ = tokio::task::spawn_blocking(move || mqtt.finish(MQTT_STOP_GRACE)).await;
        }
    }
}

/// How long a stopping server waits for the broker to take the queued messages.
const MQTT_STOP_GRACE: Duration = Duration::from_secs(2);
/// A listening socket on `addr`, and the address it got (the real port for `:0`).
async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServerError> {
    let bind_error = |source| ServerError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    Ok((listener, local))
}

/// The next connection on any of `listeners` (not empty).
async fn accept_any(
    listeners: &[TcpListener],
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    // `accept` is cancel-safe: the listeners that lost the race keep their pending connections.
    let accepts = listeners.iter().map(|l| Box::pin(l.accept()));
    futures_util::future::select_all(accepts).await.0
}

impl AppState {
    /// Whether recognitions are recorded anywhere (history or MQTT); callers build the
    /// [`Entry`] only then.
    pub fn records_recognitions(&self) -> bool {
        self.history.enabled() || self.mqtt.is_some()
    }

    /// The one place a recognition is recorded, whatever produced it: published to MQTT
    /// (queued; a broker that is down or slow never makes the caller wait) and added to the
    /// history: to its list at once (so the next `/v1/history` has it: the page asks right after
    /// its answer), and to its file on the blocking pool when called inside the runtime.
    pub fn record_recognition(self: &Arc<Self>, entry: Entry) {
        if let Some(mqtt) = &self.mqtt {
            // The thumbnail stays in the history (the page shows it); subscribers get the rest.
            mqtt.publish_json(&Entry {
                thumbnail: String::new(),
                ..entry.clone()
            });
        }
        if !self.history.enabled() {
            return;
        }
        let Some(line) = self.history.remember(entry) else {
            return;
        };
        let state = Arc::clone(self);
        let append = move || {
            if !state.history.append_line(&line) {
                state.metrics.history_write_failed();
            }
        };
        match tokio::runtime::Handle::try_current() {
            // The file append blocks; the client need not wait for it.
            Ok(runtime) => drop(runtime.spawn_blocking(append)),
            Err(_) => append(),
        }
    }

    /// Everything but the listener: metrics, the history (reloaded from its file), and the
    /// inference thread, which warms the model up in the background.
    pub fn start(config: Config, model: ServedModel) -> Result<Arc<AppState>, ServerError> {
        config.validate()?;
        // Request bodies and decoded images (1 MiB and more) get their own mappings, given back
        // to the system when freed (glibc would otherwise keep them in its heaps).
        resnet_kernels::memory::map_large_allocations(1 << 20);
        let metrics = Arc::new(Metrics::default());
        let watch = config
            .watch
            .as_ref()
            .map(crate::watch::WatchHub::new)
            .transpose()?;
        if let Some(hub) = &watch {
            metrics.set_watch_sources(hub.stats());
        }
        let history = History::open(config.history, config.history_file.as_deref())?;
        metrics.history_lines_skipped(history.skipped_lines());
        let batcher = Batcher::start(
            Arc::clone(&model.backend),
            model.fc_weight.clone(),
            BatchSettings {
                max_batch: config.max_batch,
                batch_wait: config.batch_wait,
                queue: config.queue,
            },
            Arc::clone(&metrics),
        )
        .map_err(|source| ServerError::Start {
            what: "inference thread",
            source,
        })?;
        let mqtt = match &config.mqtt {
            None => None,
            Some(c) => Some(Arc::new(
                crate::mqtt::Publisher::start(c, "serve").map_err(|source| ServerError::Start {
                    what: "MQTT publisher",
                    source,
                })?,
            )),
        };
        let bodies = BodyBudget::new(config.max_inflight_bytes / 2, Arc::clone(&metrics));
        let decodes = DecodeBudget::new(
            config.max_concurrent_decodes,
            config.max_inflight_bytes - config.max_inflight_bytes / 2,
            Arc::clone(&metrics),
        );
        let openapi = crate::routes::openapi::document_json(&config, &model.info);
        Ok(Arc::new(AppState {
            openapi,
            bodies,
            decodes,
            config,
            model,
            batcher,
            metrics,
            history,
            mqtt,
            shutting_down: AtomicBool::new(false),
            watch,
            closing: tokio::sync::watch::channel(false).0,
        }))
    }
}

/// One HTTP/1.1 connection on any byte stream, served by [`handle`] with the configured header
/// timeout and keep-alive. It resolves when the client closes the connection. A client that
/// shuts down its sending side after its request (`nc -N`, `shutdown(SHUT_WR)`) still gets the
/// answer: half-closed connections are served, as HTTP/1.1 intends.
pub fn connection<I>(
    state: &Arc<AppState>,
    io: I,
) -> impl GracefulConnection<Error = hyper::Error> + Send
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let st = Arc::clone(state);
    let served = Arc::new(AtomicUsize::new(0));
    let service = service_fn(move |req| {
        let st = Arc::clone(&st);
        let n = served.fetch_add(1, Ordering::Relaxed) + 1;
        async move {
            let mut resp = handle(req, Arc::clone(&st)).await;
            // Pipelined and kept-alive requests are bounded per connection: the last one
            // allowed closes it (the client reconnects, and shares the slots fairly).
            if n == st.config.max_requests_per_connection {
                st.metrics.connection_request_limit_reached();
                resp.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(resp)
        }
    });
    let io = DeclaredLength::new(io, state.config.max_body_bytes);
    let io = WriteDeadline::new(io, state.config.write_timeout, Arc::clone(&state.metrics));
    http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.header_read_timeout)
        .keep_alive(true)
        .half_close(true)
        .serve_connection(TokioIo::new(io), service)
}

/// Serves `request`, the raw bytes a client sends on one connection (one request or several
/// pipelined), in memory, and returns the raw bytes the server sends back before it closes
/// the connection. Exactly the path a TCP client takes, minus the socket: the HTTP fuzz
/// target drives the whole stack with it.
pub async fn respond_in_memory(state: &Arc<AppState>, request: &[u8]) -> Vec<u8> {
    let (mut client, server_side) = tokio::io::duplex(64 * 1024);
    let serve = connection(state, server_side);
    let talk = async move {
        let mut response = Vec::new();
        let (mut rx, mut tx) = tokio::io::split(&mut client);
        let send = async {
            // The server may close before reading everything (e.g. after a 413): not an error here.
            let _ = tx.write_all(request).await;
            let _ = tx.shutdown().await;
        };
        let receive = rx.read_to_end(&mut response);
        let ((), _) = tokio::join!(send, receive);
        response
    };
    let (_, response) = tokio::join!(serve, talk);
    response
}

/// Gives the memory of finished requests back to the system, at most once per interval and only
/// after some was freed.
async fn trim_memory(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(state.config.memory_trim_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if state.metrics.take_memory_released() {
            let _ = tokio::task::spawn_blocking(resnet_kernels::memory::release_free_memory).await;
        }
    }
}

/// Accepts on every listener (the main one and the DeepStack port) into the same router, limits
/// and graceful shutdown.
async fn accept_loop(
    listeners: Vec<TcpListener>,
    state: Arc<AppState>,
    mut stop: oneshot::Receiver<()>,
) {
    let graceful = GracefulShutdown::new();
    let trimmer = tokio::spawn(trim_memory(Arc::clone(&state)));
    let slots = Arc::new(tokio::sync::Semaphore::new(
        state.config.max_connections.max(1),
    ));
    loop {
        tokio::select! {
            accepted = accept_any(&listeners) => match accepted {
                Ok((stream, _peer)) => {
                    // At the connection limit the newcomer is closed at once: better than
                    // letting idle clients exhaust memory or file descriptors.
                    let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                        state.metrics.connection_refused();
                        drop(stream);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let conn = connection(&state, stream);
                    let watched = graceful.watch(conn);
                    tokio::spawn(async move {
                        // A connection error (client gone, header timeout) ends that connection only.
                        let _ = watched.await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    // E.g. out of file descriptors: wait a little rather than spin or die.
                    eprintln!("resnet serve: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = &mut stop => break,
        }
    }
    drop(listeners);
    trimmer.abort();
    state.begin_shutdown();
    let grace = state.config.shutdown_grace;
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            eprintln!("resnet serve: requests still running after {:.0} s; closing anyway", grace.as_secs_f64());
        }
    }
    let st = Arc::clone(&state);
    // The watchers may wait for answers of the inference thread: they stop first.
    let _ = tokio::task::spawn_blocking(move || {
        if let Some(hub) = &st.watch {
            hub.join();
        }
        st.batcher.close()
    })
    .await;
}

/// Threads of the blocking pool `run` builds: the decode budget's slots and its small lane,
/// plus two for header reads, history appends and memory trims (the budget, not the pool,
/// bounds the decodes).
pub fn blocking_threads(config: &Config) -> usize {
    config.max_concurrent_decodes + 1 + 2
}

/// Runs the server until SIGINT or SIGTERM, then shuts it down gracefully. Builds its own
/// tokio runtime: `threads` async workers and as many blocking threads for decoding.
pub fn run(config: Config, model: ServedModel, threads: usize) -> Result<(), ServerError> {
    let threads = threads.max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .max_blocking_threads(blocking_threads(&config))
        .thread_name("resnet-http")
        .enable_all()
        .build()
        .map_err(|source| ServerError::Start {
            what: "async runtime",
            source,
        })?;
    runtime.block_on(async move {
        let log = config.log_requests;
        let drain = config.drain;
        // Listening for the signals starts before the server does, and the one listener lives
        // until the end: see `Termination`.
        let mut termination = Termination::listen()?;
        let server = Server::start(config, model).await?;
        eprintln!("resnet serve: listening on http://{}", server.local_addr());
        if let Some(addr) = server.deepstack_addr() {
            eprintln!("resnet serve: also listening on http://{addr} (--deepstack-port)");
        }
        let stopped_early = tokio::select! {
            () = server.wait_ready() => false,
            () = termination.recv() => true,
        };
        if !stopped_early {
            if log {
                eprintln!("resnet serve: model warmed up, ready");
            }
            termination.recv().await;
        }
        // Readiness says 503 from now on; the listener stays open for the drain period so
        // load balancers see it and stop sending before connections are refused.
        server.state.begin_shutdown();
        if !drain.is_zero() {
            eprintln!(
                "resnet serve: SIGTERM: not ready; draining for {:.1} s before closing the listener",
                drain.as_secs_f64()
            );
            tokio::time::sleep(drain).await;
        }
        eprintln!("resnet serve: shutting down, finishing in-flight requests");
        server.shutdown().await;
        eprintln!("resnet serve: stopped");
        Ok(())
    })
}

/// SIGINT (Ctrl-C) and SIGTERM, listened to from the moment `listen` returns until the value is
/// dropped (elsewhere than on Unix: Ctrl-C only, from the first `recv`). The server makes one and keeps it: a signal that tokio receives while no listener
/// exists wakes no one and is lost (its handler, once installed, stays installed, so the signal no
/// longer stops the process either). Two listeners made one after the other, one for the warm-up
/// and one after it, once lost a SIGTERM sent right after readiness: the server kept running.
struct Termination {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Termination {
    /// Registers the listeners now (inside the runtime), not at the first poll.
    #[cfg(unix)]
    fn listen() -> Result<Self, ServerError> {
        use tokio::signal::unix::{signal, SignalKind};
        let start = |source| ServerError::Start {
            what: "signal handlers",
            source,
        };
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).map_err(start)?,
            terminate: signal(SignalKind::terminate()).map_err(start)?,
        })
    }

    #[cfg(not(unix))]
    fn listen() -> Result<Self, ServerError> {
        Ok(Self {})
    }

    /// Resolves at the next SIGINT or SIGTERM (or at once for one that came since the last call).
    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
