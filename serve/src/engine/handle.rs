//! The handles clients hold: [`EngineHandle`] (submit, metrics, shutdown) and
//! [`RequestHandle`] (the event stream of one request, and its cancellation).
//!
//! The worker thread owns the model and every sequence; handles talk to it through channels.
//! A request's events flow through a `tokio::sync::mpsc` channel (only tokio's `sync`
//! feature, no runtime), so a handle can be read from blocking code
//! ([`RequestHandle::next_blocking`]) or awaited ([`RequestHandle::next`]).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use internlm2::Tokenizer;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::error::EngineError;
use super::metrics::EngineMetrics;
use super::request::{Event, FinishReason, Request, Usage};
use super::validate::Limits;

/// What handles send to the worker.
pub(crate) enum Command {
    /// A validated request.
    Submit(Box<Submission>),
    /// Something changed (a cancellation): look again.
    Wake,
    /// Stop: with `drain`, finish the running sequences first; otherwise cancel everything.
    Shutdown {
        /// Finish running sequences before stopping.
        drain: bool,
    },
}

/// A request on its way to the worker.
pub(crate) struct Submission {
    pub id: u64,
    pub request: Request,
    /// `max_new_tokens` after the context policy.
    pub max_new_tokens: usize,
    pub events: UnboundedSender<Event>,
    pub cancel: Arc<AtomicBool>,
    pub submitted: Instant,
}

/// State shared by every clone of an [`EngineHandle`].
pub(crate) struct Shared {
    pub commands: Mutex<Option<Sender<Command>>>,
    pub worker: Mutex<Option<JoinHandle<()>>>,
    pub metrics: Arc<Mutex<EngineMetrics>>,
    /// Requests submitted and not yet admitted into the running batch.
    pub queued: Arc<AtomicUsize>,
    pub next_id: AtomicU64,
    pub limits: Limits,
    pub tokenizer: Option<Arc<Tokenizer>>,
}

impl Shared {
    /// Sends a stop command (if the engine still runs) and waits for the worker.
    fn stop(&self, drain: bool) {
        let sender = self.commands.lock().map(|mut s| s.take()).unwrap_or(None);
        if let Some(sender) = sender {
            let _ = sender.send(Command::Shutdown { drain });
        }
        let worker = self.worker.lock().map(|mut w| w.take()).unwrap_or(None);
        if let Some(worker) = worker
            && worker.thread().id() != std::thread::current().id()
            && worker.join().is_err()
        {
            log::error!("the engine worker panicked while stopping");
        }
    }
}

impl Drop for Shared {
    /// The last [`EngineHandle`] is gone: cancel whatever still runs and join the worker.
    fn drop(&mut self) {
        self.stop(false);
    }
}

/// A cheap, cloneable, `Send + Sync` handle to a running engine (not generic over the
/// backend). The engine stops when [`shutdown`](Self::shutdown) is called or the last clone
/// is dropped (which cancels running requests).
#[derive(Clone)]
pub struct EngineHandle {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle")
            .field("limits", &self.shared.limits)
            .finish_non_exhaustive()
    }
}

impl EngineHandle {
    /// Validates `request` and queues it. Errors are immediate and typed: a bad parameter,
    /// a context overflow, a full queue, or a stopped engine.
    pub fn submit(&self, request: Request) -> Result<RequestHandle, EngineError> {
        let shared = &self.shared;
        let max_new_tokens = shared
            .limits
            .validate(&request, shared.tokenizer.is_some())?;
        let waiting = shared.queued.load(Ordering::Acquire);
        if waiting >= shared.limits.max_waiting {
            return Err(EngineError::QueueFull { waiting });
        }
        let guard = shared.commands.lock().map_err(|_| EngineError::ShutDown)?;
        let sender = guard.as_ref().ok_or(EngineError::ShutDown)?;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (events, receiver) = unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        shared.queued.fetch_add(1, Ordering::AcqRel);
        let submission = Submission {
            id,
            request,
            max_new_tokens,
            events,
            cancel: cancel.clone(),
            submitted: Instant::now(),
        };
        if sender.send(Command::Submit(Box::new(submission))).is_err() {
            shared.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(EngineError::ShutDown);
        }
        Ok(RequestHandle {
            id,
            events: receiver,
            cancel: CancelToken {
                flag: cancel,
                wake: sender.clone(),
            },
            done: false,
        })
    }

    /// The latest metrics snapshot (updated after every step).
    pub fn metrics(&self) -> EngineMetrics {
        self.shared
            .metrics
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// The context limit in tokens (prompt plus new tokens) a request gets by default.
    pub fn context_limit(&self) -> usize {
        self.shared.limits.context_limit
    }

    /// The largest prompt plus `max_new_tokens` the KV pool can hold for one request (a
    /// request past it fails with [`EngineError::ExceedsKvPool`], or is clamped under
    /// [`OverflowPolicy::ClampNewTokens`](internlm2::generate::OverflowPolicy)).
    pub fn max_sequence_tokens(&self) -> usize {
        self.shared.limits.max_sequence_tokens()
    }

    /// The model's vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.shared.limits.vocab_size
    }

    /// The tokenizer the engine decodes with, if it was given one.
    pub fn tokenizer(&self) -> Option<Arc<Tokenizer>> {
        self.shared.tokenizer.clone()
    }

    /// Stops accepting requests, cancels the waiting ones, lets the running ones finish, and
    /// joins the worker thread. Later submits fail with [`EngineError::ShutDown`].
    pub fn shutdown(&self) {
        self.shared.stop(true);
    }

    /// Stops at once: every waiting and running request finishes as
    /// [`FinishReason::Cancelled`]; joins the worker thread.
    pub fn abort(&self) {
        self.shared.stop(false);
    }
}

/// Cancels one request from anywhere (`Clone + Send + Sync`).
#[derive(Clone)]
pub struct CancelToken {
    flag: Arc<AtomicBool>,
    wake: Sender<Command>,
}

impl CancelToken {
    /// Cancels the request: it finishes as [`FinishReason::Cancelled`] (unless it already
    /// finished) and its KV blocks are freed.
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::Release);
        let _ = self.wake.send(Command::Wake);
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }
}

impl std::fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelToken")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

/// The event stream of one request. Dropping it cancels the request.
pub struct RequestHandle {
    id: u64,
    events: UnboundedReceiver<Event>,
    cancel: CancelToken,
    done: bool,
}

impl std::fmt::Debug for RequestHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestHandle")
            .field("id", &self.id)
            .field("done", &self.done)
            .finish()
    }
}

impl RequestHandle {
    /// The engine-wide id of the request.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Cancels the request (see [`CancelToken::cancel`]).
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// A token that cancels this request from another thread or task.
    pub fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
    }

    /// The next event, blocking the thread; `None` after [`Event::Finished`].
    ///
    /// Call it from blocking code only: inside an async runtime use [`next`](Self::next)
    /// (tokio refuses to block a runtime thread).
    pub fn next_blocking(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        let event = self.events.blocking_recv();
        self.settle(event)
    }

    /// The next event; `None` after [`Event::Finished`].
    pub async fn next(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        let event = self.events.recv().await;
        self.settle(event)
    }

    /// The next event if one is ready, without waiting.
    pub fn try_next(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        match self.events.try_recv() {
            Ok(event) => self.settle(Some(event)),
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => None,
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => self.settle(None),
        }
    }

    /// Marks the stream done after the last event; a worker that vanished without a
    /// `Finished` event (it failed) yields one with [`FinishReason::Error`].
    fn settle(&mut self, event: Option<Event>) -> Option<Event> {
        match event {
            Some(event) => {
                if matches!(event, Event::Finished { .. }) {
                    self.done = true;
                }
                Some(event)
            }
            None => {
                self.done = true;
                Some(Event::Finished {
                    reason: FinishReason::Error("the engine stopped".into()),
                    usage: Usage::default(),
                })
            }
        }
    }
}

impl Drop for RequestHandle {
    fn drop(&mut self) {
        if !self.done {
            self.cancel.cancel();
        }
    }
}
