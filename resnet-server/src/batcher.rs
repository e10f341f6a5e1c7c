//! Dynamic batching: a bounded queue in front of one inference thread.
//!
//! Requests are decoded and preprocessed on tokio's blocking pool, then [`Batcher::submit`]
//! puts the input tensor in a bounded queue (full: [`QueueFull`], which the routes turn into a
//! 503 with `Retry-After`). One dedicated thread takes the first waiting job, waits up to
//! `batch_wait` for more (up to `max_batch`), runs them as one `[N, 3, 224, 224]` forward pass
//! and answers each job on its own channel. The backend parallelises inside the forward pass
//! (rayon), so one inference thread keeps the cores busy without oversubscribing them, and the
//! accept loop and the decoders never wait for the model.
//!
//! Class activation maps need one layer's output, so `Cam` jobs run one at a time with an
//! observer; they share the queue, and its back-pressure, with classifications. So do `Trace`
//! jobs (`/v1/trace`), which keep every layer's output of one image and, when asked, recompute
//! BasicBlocks stage by stage (the heaviest part of a trace: it stays behind the same queue).

use crate::metrics::Metrics;
use ndarray::{Array3, Array4, Axis};
use resnet_core::arch::TracePoint;
use resnet_core::backend::{Backend, NoObserver};
use resnet_core::cam::{class_activation_map, ClassActivationMap};
use resnet_core::trace::branches::{BlockBranches, BlockWeights};
use resnet_core::trace::{record, Trace};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// What a job asks of the model.
pub enum Work {
    /// Logits of one image `[3, 224, 224]`.
    Classify(Array3<f32>),
    /// Logits and the activation map of `class` (default top-1) for one image.
    Cam {
        /// The image `[3, 224, 224]`.
        input: Array3<f32>,
        /// The class to explain.
        class: Option<usize>,
    },
    /// Every trace point of one image, through each of `backends` in turn (`/v1/trace`).
    Trace {
        /// The image `[3, 224, 224]`.
        input: Array3<f32>,
        /// The backend to trace, then the one to compare with, if any.
        backends: Vec<Arc<dyn Backend>>,
        /// BasicBlocks to recompute stage by stage from the first backend's trace (`?block=`).
        branches: Option<BlockRequest>,
    },
}

/// The BasicBlocks to recompute (`?block=`) and the folded weights to do it with.
pub type BlockRequest = (Arc<BlockWeights>, Vec<TracePoint>);

/// BasicBlocks recomputed stage by stage, for [`Work::Trace`].
#[derive(Debug)]
pub struct TracedBranches {
    /// One per block asked for, in the order asked.
    pub blocks: Vec<BlockBranches>,
    /// Time it took.
    pub elapsed: Duration,
}

/// A finished job.
#[derive(Debug)]
pub struct Done {
    /// The image's 1000 logits.
    pub logits: Vec<f32>,
    /// The activation map, for [`Work::Cam`].
    pub cam: Option<ClassActivationMap>,
    /// One trace per backend, for [`Work::Trace`].
    pub traces: Vec<Trace>,
    /// The recomputed blocks, for a [`Work::Trace`] that asked for them.
    pub branches: Option<TracedBranches>,
    /// Time spent waiting in the queue.
    pub queue: Duration,
    /// Time of the forward pass that computed it.
    pub inference: Duration,
    /// Images in that forward pass.
    pub batch_size: usize,
}

/// The queue is full: come back later.
#[derive(Debug)]
pub struct QueueFull;

/// The answer to a job: its result or the model's error message.
pub type Reply = oneshot::Receiver<Result<Done, String>>;

struct Job {
    work: Work,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Done, String>>,
}

/// Settings of the inference thread.
#[derive(Clone, Copy, Debug)]
pub struct BatchSettings {
    /// Most images per forward pass.
    pub max_batch: usize,
    /// How long the first job waits for company.
    pub batch_wait: Duration,
    /// Jobs that may wait.
    pub queue: usize,
}

/// The sending side of the queue, and the inference thread.
pub struct Batcher {
    sender: Mutex<Option<SyncSender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl Batcher {
    /// Starts the inference thread. It first runs one warm-up pass, then sets [`Self::is_ready`].
    pub fn start(
        backend: Arc<dyn Backend>,
        fc_weight: Option<Arc<Vec<f32>>>,
        settings: BatchSettings,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Batcher> {
        let (tx, rx) = sync_channel::<Job>(settings.queue);
        let ready = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            backend,
            fc_weight,
            settings,
            metrics: Arc::clone(&metrics),
            ready: Arc::clone(&ready),
        };
        let thread = std::thread::Builder::new()
            .name("resnet-inference".into())
            .spawn(move || worker.run(rx))?;
        Ok(Batcher {
            sender: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            ready,
            metrics,
        })
    }

    /// True once the model has run its warm-up pass (and until shutdown).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Queues `work`, or says the queue is full. Also refuses after [`Self::close`].
    pub fn submit(&self, work: Work) -> Result<Reply, QueueFull> {
        self.try_submit(work).map_err(|(full, _)| full)
    }

    /// [`Self::submit`], giving the work back when it is refused (for a caller that retries).
    pub fn try_submit(&self, work: Work) -> Result<Reply, (QueueFull, Box<Work>)> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            work,
            enqueued: Instant::now(),
            reply,
        };
        let guard = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        let Some(sender) = guard.as_ref() else {
            return Err((QueueFull, Box::new(job.work)));
        };
        self.metrics.queue_depth_add(1);
        match sender.try_send(job) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(job)) | Err(TrySendError::Disconnected(job)) => {
                self.metrics.queue_depth_add(-1);
                Err((QueueFull, Box::new(job.work)))
            }
        }
    }

    /// Stops taking jobs; the thread finishes the queued ones and exits. Blocks until it has.
    pub fn close(&self) {
        self.ready.store(false, Ordering::Release);
        drop(self.sender.lock().unwrap_or_else(|p| p.into_inner()).take());
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

struct Worker {
    backend: Arc<dyn Backend>,
    fc_weight: Option<Arc<Vec<f32>>>,
    settings: BatchSettings,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

impl Worker {
    fn run(self, rx: Receiver<Job>) {
        let warm = Array4::<f32>::zeros((1, 3, 224, 224));
        if let Err(e) = self.forward(warm.view()) {
            eprintln!("resnet serve: warm-up pass failed: {e}");
        }
        self.ready.store(true, Ordering::Release);
        while let Ok(first) = rx.recv() {
            self.metrics.queue_depth_add(-1);
            let mut jobs = vec![first];
            let deadline = Instant::now() + self.settings.batch_wait;
            while jobs.len() < self.settings.max_batch {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(job) => {
                        self.metrics.queue_depth_add(-1);
                        jobs.push(job);
                    }
                    Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            self.run_jobs(jobs);
        }
    }

    /// A forward pass that turns a panic into an error, so the thread survives any input.
    fn forward(&self, batch: ndarray::ArrayView4<'_, f32>) -> Result<ndarray::Array2<f32>, String> {
        match catch_unwind(AssertUnwindSafe(|| {
            self.backend.forward(batch, &mut NoObserver)
        })) {
            Ok(Ok(logits)) => Ok(logits),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the model panicked on this batch".into()),
        }
    }

    fn run_jobs(&self, jobs: Vec<Job>) {
        // Jobs whose client is gone (timed out, disconnected) are not worth computing.
        let (classify, singles): (Vec<Job>, Vec<Job>) = jobs
            .into_iter()
            .filter(|j| !j.reply.is_closed())
            .partition(|j| matches!(j.work, Work::Classify(_)));
        if !classify.is_empty() {
            self.run_batch(classify);
        }
        for job in singles {
            match job.work {
                Work::Trace { .. } => self.run_trace(job),
                _ => self.run_cam(job),
            }
        }
    }

    fn run_batch(&self, jobs: Vec<Job>) {
        let started = Instant::now();
        let views: Vec<_> = jobs
            .iter()
            .filter_map(|j| match &j.work {
                Work::Classify(a) => Some(a.view().insert_axis(Axis(0))),
                Work::Cam { .. } | Work::Trace { .. } => None,
            })
            .collect();
        let result = ndarray::concatenate(Axis(0), &views)
            .map_err(|e| format!("cannot stack the batch: {e}"))
            .and_then(|batch| self.forward(batch.view()));
        let inference = started.elapsed();
        let n = jobs.len();
        self.metrics.observe_batch(n, inference);
        for (i, job) in jobs.into_iter().enumerate() {
            let answer = match &result {
                Ok(logits) => Ok(Done {
                    logits: logits.row(i).to_vec(),
                    cam: None,
                    traces: Vec::new(),
                    branches: None,
                    queue: started.saturating_duration_since(job.enqueued),
                    inference,
                    batch_size: n,
                }),
                Err(e) => Err(e.clone()),
            };
            let _ = job.reply.send(answer);
        }
    }

    fn run_cam(&self, job: Job) {
        let Work::Cam { input, class } = &job.work else {
            return;
        };
        let started = Instant::now();
        let Some(fc_weight) = &self.fc_weight else {
            let _ = job.reply.send(Err(
                "this model has no f32 fc.weight for activation maps".into()
            ));
            return;
        };
        let result = catch_unwind(AssertUnwindSafe(|| {
            class_activation_map(&*self.backend, fc_weight, input.view(), *class)
        }));
        let inference = started.elapsed();
        self.metrics.observe_batch(1, inference);
        let answer = match result {
            Ok(Ok(map)) => Ok(Done {
                logits: map.logits.clone(),
                cam: Some(map),
                traces: Vec::new(),
                branches: None,
                queue: started.saturating_duration_since(job.enqueued),
                inference,
                batch_size: 1,
            }),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the model panicked on this image".into()),
        };
        let _ = job.reply.send(answer);
    }

    fn run_trace(&self, job: Job) {
        let Work::Trace {
            input,
            backends,
            branches,
        } = &job.work
        else {
            return;
        };
        let started = Instant::now();
        let batch = input.view().insert_axis(Axis(0));
        let result = catch_unwind(AssertUnwindSafe(|| {
            let traces = backends
                .iter()
                .map(|b| record(&**b, batch))
                .collect::<resnet_core::Result<Vec<Trace>>>()?;
            let recomputed = match (branches, traces.first()) {
                (Some((weights, points)), Some(trace)) => {
                    let t = Instant::now();
                    let blocks = weights.of_trace(trace, points)?;
                    Some(TracedBranches {
                        blocks,
                        elapsed: t.elapsed(),
                    })
                }
                _ => None,
            };
            Ok::<_, resnet_core::Error>((traces, recomputed))
        }));
        let inference = started.elapsed();
        self.metrics.observe_batch(1, inference);
        let answer = match result {
            Ok(Ok((traces, branches))) => Ok(Done {
                logits: traces
                    .first()
                    .map(|t| t.logits.row(0).to_vec())
                    .unwrap_or_default(),
                cam: None,
                traces,
                branches,
                queue: started.saturating_duration_since(job.enqueued),
                inference,
                batch_size: 1,
            }),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the model panicked on this image".into()),
        };
        let _ = job.reply.send(answer);
    }
}
