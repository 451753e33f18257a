//! A loaded model: its instance pool and the batcher task that feeds it.
//!
//! Requests go into a bounded per-model queue. One task per loaded model takes them, merges
//! compatible requests into a batch (up to `max_batch_size` rows, waiting at most
//! `max_queue_delay`), and runs the batch on a free instance on the blocking pool. When the
//! [`LoadedModel`] is dropped (evicted and no request holds it) the queue closes, the task ends
//! and the instances are freed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herd_api::v2::{Tensor, TensorData};
use herd_runtime::{Cancel, Instance, RuntimeError, Signature};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::CoreError;

pub(crate) struct Job {
    pub inputs: Vec<Tensor>,
    /// Fired when the request stops waiting (timeout, client gone).
    pub cancel: Cancel,
    /// Rows in the first dimension when the request can join a batch.
    pub rows: Option<usize>,
    pub enqueued: Instant,
    pub reply: oneshot::Sender<Result<JobOutput, CoreError>>,
}

pub(crate) struct JobOutput {
    pub outputs: Vec<Tensor>,
    pub queue: Duration,
    pub inference: Duration,
    pub batch_rows: usize,
}

pub(crate) struct BatchSettings {
    pub max_batch_size: usize,
    pub max_queue_delay: Duration,
}

/// A model ready to serve. Cloned `Arc`s of it are the guards that keep it from eviction.
pub struct LoadedModel {
    pub name: String,
    pub version: String,
    pub signature: Signature,
    pub platform: &'static str,
    pub(crate) tx: mpsc::Sender<Job>,
    pub(crate) queued: Arc<AtomicUsize>,
    pub(crate) capacity: usize,
    pub(crate) pool: Arc<InstancePool>,
    pub(crate) returning: Arc<Returning>,
    /// Every output has a dynamic first dimension: rows can be batched and chunked.
    pub(crate) batchable: bool,
}

/// Whether more requests are on their way: the clients of the last answered batch, most of
/// which send their next request within a few milliseconds when they run in a closed loop
/// (a client, or a pool of them, waiting for each answer before it sends the next).
/// The batcher waits up to `max_queue_delay` for them while fewer have arrived since.
#[derive(Default)]
pub(crate) struct Returning {
    /// Requests in the last answered batch, and when it was answered.
    last: Mutex<Option<(usize, Instant)>>,
    /// Requests submitted since then.
    arrived: AtomicUsize,
}

impl Returning {
    /// Clients of a batch answered within `WINDOW` count as coming back.
    const WINDOW: Duration = Duration::from_millis(100);

    pub(crate) fn answered(&self, n: usize) {
        *self.last.lock() = Some((n, Instant::now()));
        self.arrived.store(0, Ordering::Release);
    }

    pub(crate) fn arrived(&self) {
        self.arrived.fetch_add(1, Ordering::AcqRel);
    }

    /// Requests expected soon: the last batch's count less those that came since it was answered.
    pub(crate) fn expected(&self) -> usize {
        match *self.last.lock() {
            Some((n, at)) if at.elapsed() < Self::WINDOW => {
                n.saturating_sub(self.arrived.load(Ordering::Acquire))
            }
            _ => 0,
        }
    }
}

/// A model's runnable instances, as loaded.
pub(crate) struct Instances {
    /// Each runs one batch at a time: as many runs at once as there are instances.
    pub each: Vec<Box<dyn Instance>>,
    /// An instance on the server's shared pool for a run that has the model to itself
    /// (config `solo`): a lone request gets every core, concurrent ones use `each`.
    pub solo: Option<Box<dyn Instance>>,
}

impl Instances {
    /// Every instance, the solo one last.
    pub fn all(&self) -> impl Iterator<Item = &Box<dyn Instance>> {
        self.each.iter().chain(self.solo.as_ref())
    }

    pub fn map(self, f: impl Fn(Box<dyn Instance>) -> Box<dyn Instance>) -> Instances {
        Instances {
            each: self.each.into_iter().map(&f).collect(),
            solo: self.solo.map(f),
        }
    }
}

pub(crate) struct InstancePool {
    instances: Mutex<Vec<Box<dyn Instance>>>,
    solo: Mutex<Option<Box<dyn Instance>>>,
    /// Runs in progress (the solo instance is used only by a run that starts alone).
    running: AtomicUsize,
    free: Arc<Semaphore>,
    total: usize,
}

impl Drop for InstancePool {
    /// Instances are freed under the measurement lock, so an evicted model's memory going back
    /// while another model loads does not shrink that model's measured charge.
    fn drop(&mut self) {
        let _g = crate::cache::MEASURE
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        self.instances.get_mut().clear();
        self.solo.get_mut().take();
        // What the sessions (and weights no other model holds) freed goes back to the system:
        // blocks under the mmap threshold would otherwise stay in the allocator's arenas.
        herd_runtime::memory::trim_idle();
    }
}

impl InstancePool {
    pub fn new(instances: Instances) -> InstancePool {
        let n = instances.each.len();
        InstancePool {
            instances: Mutex::new(instances.each),
            solo: Mutex::new(instances.solo),
            running: AtomicUsize::new(0),
            free: Arc::new(Semaphore::new(n)),
            total: n,
        }
    }

    /// Runs `inputs` on a free instance (blocking; call on the blocking pool with a permit held):
    /// the solo instance when no other run is in progress and the model has one.
    fn run(&self, inputs: Vec<Tensor>, cancel: &Cancel) -> Result<Vec<Tensor>, RuntimeError> {
        struct Running<'a>(&'a AtomicUsize);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let alone = self.running.fetch_add(1, Ordering::AcqRel) == 0;
        let _running = Running(&self.running);
        if alone {
            let solo = self.solo.lock().take();
            if let Some(mut inst) = solo {
                let r = inst.run_cancellable(inputs, cancel);
                *self.solo.lock() = Some(inst);
                return r;
            }
        }
        let mut inst =
            self.instances.lock().pop().ok_or_else(|| {
                RuntimeError::Run("no free instance (internal error)".to_string())
            })?;
        let r = inst.run_cancellable(inputs, cancel);
        self.instances.lock().push(inst);
        r
    }
}

impl LoadedModel {
    pub(crate) fn start(
        name: String,
        version: String,
        signature: Signature,
        platform: &'static str,
        instances: Instances,
        capacity: usize,
        batch: BatchSettings,
    ) -> LoadedModel {
        let (tx, rx) = mpsc::channel(capacity.max(1) + 1);
        let queued = Arc::new(AtomicUsize::new(0));
        let pool = Arc::new(InstancePool::new(instances));
        let rows_split = signature
            .outputs
            .iter()
            .all(|o| o.shape.first() == Some(&-1));
        let batchable = batch.max_batch_size > 1 && rows_split;
        let returning = Arc::new(Returning::default());
        tokio::spawn(batch_loop(
            name.clone(),
            rx,
            pool.clone(),
            queued.clone(),
            returning.clone(),
            batch,
            batchable,
        ));
        LoadedModel {
            name,
            version,
            signature,
            platform,
            tx,
            queued,
            capacity,
            pool,
            returning,
            batchable: rows_split,
        }
    }

    /// Queues a validated request; refuses at once when the queue is full. Dropping the
    /// returned [`Pending`] before its answer cancels the request: dropped from the queue, or
    /// its run stopped.
    pub(crate) fn submit(
        &self,
        inputs: Vec<Tensor>,
        rows: Option<usize>,
    ) -> Result<Pending, CoreError> {
        let (reply, rx) = oneshot::channel();
        let cancel = Cancel::new();
        let job = Job {
            inputs,
            cancel: cancel.clone(),
            rows,
            enqueued: Instant::now(),
            reply,
        };
        // The bound counts requests that wait (in the channel or held by the batcher for a
        // free instance), not the ones running.
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(CoreError::Overloaded {
                model: self.name.clone(),
                capacity: self.capacity,
            });
        }
        self.returning.arrived();
        match self.tx.try_send(job) {
            Ok(()) => Ok(Pending {
                rx,
                cancel: Some(cancel),
            }),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                Err(CoreError::Overloaded {
                    model: self.name.clone(),
                    capacity: self.capacity,
                })
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                Err(CoreError::ShuttingDown)
            }
        }
    }

    pub fn queue_depth(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Instances currently free (for tests and the index).
    pub fn free_instances(&self) -> usize {
        self.pool.free.available_permits()
    }
}

/// A queued request's answer to come. Dropped unanswered, it cancels the request.
pub(crate) struct Pending {
    rx: oneshot::Receiver<Result<JobOutput, CoreError>>,
    cancel: Option<Cancel>,
}

impl Pending {
    pub(crate) async fn wait(mut self) -> Result<JobOutput, CoreError> {
        let r = (&mut self.rx).await;
        self.cancel = None;
        r.map_err(|_| CoreError::ShuttingDown)?
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(c) = self.cancel.take() {
            c.cancel();
        }
    }
}

fn compatible(a: &Job, b: &Job) -> bool {
    a.inputs.len() == b.inputs.len()
        && a.inputs
            .iter()
            .zip(&b.inputs)
            .all(|(x, y)| x.shape.get(1..) == y.shape.get(1..))
}

/// Adds `j` to `batch` (of `rows` rows) when it fits under `max` rows and has the same
/// shapes; gives it back otherwise.
fn join(batch: &mut Vec<Job>, rows: &mut usize, j: Job, max: usize) -> Result<(), Job> {
    match j.rows {
        Some(r) if *rows + r <= max && compatible(&batch[0], &j) => {
            *rows += r;
            batch.push(j);
            Ok(())
        }
        _ => Err(j),
    }
}

/// The next queued request: one already waiting, or, when `company` can come and the model
/// has a queue delay, the first to arrive before `deadline`.
async fn next_job(
    rx: &mut mpsc::Receiver<Job>,
    company: bool,
    settings: &BatchSettings,
    deadline: tokio::time::Instant,
) -> Option<Job> {
    match rx.try_recv() {
        Ok(j) => Some(j),
        Err(mpsc::error::TryRecvError::Empty) if !settings.max_queue_delay.is_zero() && company => {
            tokio::time::timeout_at(deadline, rx.recv())
                .await
                .ok()
                .flatten()
        }
        Err(_) => None,
    }
}

async fn batch_loop(
    model: String,
    mut rx: mpsc::Receiver<Job>,
    pool: Arc<InstancePool>,
    queued: Arc<AtomicUsize>,
    returning: Arc<Returning>,
    settings: BatchSettings,
    batchable: bool,
) {
    let mut pending: Option<Job> = None;
    loop {
        let first = match pending.take() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => break,
            },
        };
        let mut batch = vec![first];
        let mut rows = batch[0].rows.unwrap_or(0);
        if batchable && batch[0].rows.is_some() {
            let deadline = tokio::time::Instant::now() + settings.max_queue_delay;
            while rows < settings.max_batch_size {
                // Wait for company only when it can come: another request is running on this
                // model now, or the clients of the last answered batch have not all come back.
                // A lone request runs at once.
                let company =
                    pool.free.available_permits() < pool.total || returning.expected() > 0;
                let Some(j) = next_job(&mut rx, company, &settings, deadline).await else {
                    break;
                };
                if let Err(j) = join(&mut batch, &mut rows, j, settings.max_batch_size) {
                    pending = Some(j);
                    break;
                }
            }
        }
        let Ok(permit) = pool.free.clone().acquire_owned().await else {
            break;
        };
        // Requests that came while this batch waited for an instance join it: otherwise they
        // would wait for the next run, and closed-loop clients would split into two cohorts
        // that take turns in half-size batches.
        // When the batch that held the instance was just answered, its clients are about to
        // send again: wait up to `max_queue_delay` for them, so they run in this batch rather
        // than in the next one (closed-loop clients would otherwise split into a large and a
        // small cohort, and the small one runs alone).
        if batchable && batch[0].rows.is_some() && pending.is_none() {
            let deadline = tokio::time::Instant::now() + settings.max_queue_delay;
            while rows < settings.max_batch_size {
                let company = returning.expected() > 0;
                let Some(j) = next_job(&mut rx, company, &settings, deadline).await else {
                    break;
                };
                if let Err(j) = join(&mut batch, &mut rows, j, settings.max_batch_size) {
                    pending = Some(j);
                    break;
                }
            }
        }
        queued.fetch_sub(batch.len(), Ordering::AcqRel);
        // Requests whose client went away are dropped here, before they cost an inference.
        batch.retain(|j| !j.reply.is_closed() && !j.cancel.is_cancelled());
        if batch.is_empty() {
            continue;
        }
        let pool = pool.clone();
        let model = model.clone();
        let returning = returning.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            run_batch(&model, &pool, batch, &returning);
            // Give back what a large run freed, so resident memory comes back down: now and
            // then while the model is busy, and always once it has nothing running (the last
            // run of a burst must not leave its memory behind because a trim ran just before).
            if pool.running.load(Ordering::Acquire) == 0 {
                herd_runtime::memory::trim_idle();
            } else {
                herd_runtime::memory::trim();
            }
        });
    }
}

/// Bad request content found while running (e.g. a text that is not UTF-8) is the client's
/// error (400); anything else failed inside the model (500).
fn run_error(model: &str, e: RuntimeError) -> CoreError {
    match e {
        RuntimeError::InvalidInput(reason) => {
            CoreError::InvalidInput(format!("model '{model}': {reason}"))
        }
        other => CoreError::Inference {
            model: model.to_string(),
            reason: other.to_string(),
        },
    }
}

/// Runs `batch` and answers its requests; `returning` learns of the answers just before they
/// go out (so that the clients' next requests count as arrived after them).
fn run_batch(model: &str, pool: &InstancePool, batch: Vec<Job>, returning: &Returning) {
    let started = Instant::now();
    if batch.len() == 1 {
        let job = batch.into_iter().next().expect("one job");
        let queue = started.duration_since(job.enqueued);
        let rows = job.rows.unwrap_or(1);
        let r = pool.run(job.inputs, &job.cancel);
        let inference = started.elapsed();
        returning.answered(1);
        let _ = job.reply.send(
            r.map(|outputs| JobOutput {
                outputs,
                queue,
                inference,
                batch_rows: rows,
            })
            .map_err(|e| run_error(model, e)),
        );
        return;
    }
    // Concatenate each input along the first dimension.
    let total: usize = batch.iter().map(|j| j.rows.unwrap_or(0)).sum();
    let mut merged: Vec<Tensor> = Vec::with_capacity(batch[0].inputs.len());
    for (i, first) in batch[0].inputs.iter().enumerate() {
        let mut data = first.data.clone();
        for j in &batch[1..] {
            data.extend_from(&j.inputs[i].data);
        }
        let mut shape = first.shape.clone();
        shape[0] = total as i64;
        merged.push(Tensor::new(first.name.clone(), shape, data));
    }
    // The merged run stops only when every request in it is cancelled.
    let cancel = Cancel::new();
    let remaining = Arc::new(AtomicUsize::new(batch.len()));
    for j in &batch {
        let (cancel, remaining) = (cancel.clone(), remaining.clone());
        j.cancel.on_cancel(move || {
            if remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                cancel.cancel();
            }
        });
    }
    let result = pool.run(merged, &cancel);
    let inference = started.elapsed();
    returning.answered(batch.len());
    let outputs = match result {
        Ok(o) => o,
        Err(e) => {
            let err = run_error(model, e);
            for j in batch {
                let _ = j.reply.send(Err(err.clone()));
            }
            return;
        }
    };
    // Split each output back by rows.
    let mut offset = 0usize;
    for j in batch {
        let rows = j.rows.unwrap_or(0);
        let mut mine = Vec::with_capacity(outputs.len());
        let mut err = None;
        for o in &outputs {
            let n0 = o.shape.first().copied().unwrap_or(0).max(0) as usize;
            if n0 != total || (total > 0 && o.data.len() % total != 0) {
                err = Some(format!(
                    "output '{}' has {n0} rows for a batch of {total}; set max_batch_size = 1 in config.toml for this model",
                    o.name
                ));
                break;
            }
            let per_row = o.data.len().checked_div(total).unwrap_or(0);
            let data: TensorData = o.data.slice(offset * per_row, (offset + rows) * per_row);
            let mut shape = o.shape.clone();
            shape[0] = rows as i64;
            mine.push(Tensor::new(o.name.clone(), shape, data));
        }
        let queue = started.duration_since(j.enqueued);
        let _ = j.reply.send(match err {
            Some(reason) => Err(CoreError::Inference {
                model: model.to_string(),
                reason,
            }),
            None => Ok(JobOutput {
                outputs: mine,
                queue,
                inference,
                batch_rows: total,
            }),
        });
        offset += rows;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc as std_mpsc;
    use std::sync::Arc;

    use herd_api::v2::{Tensor, TensorData};
    use herd_runtime::{Cancel, Instance, RuntimeError, Signature};

    use super::{InstancePool, Instances, Returning};

    /// Answers its own name; a run holds until the test lets it go (`gate`), so the test
    /// decides which runs overlap.
    struct Tagged {
        name: &'static str,
        sig: Signature,
        started: std_mpsc::Sender<&'static str>,
        gate: Arc<parking_lot::Mutex<std_mpsc::Receiver<()>>>,
    }

    impl Instance for Tagged {
        fn signature(&self) -> &Signature {
            &self.sig
        }
        fn run(&mut self, _inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RuntimeError> {
            self.started.send(self.name).unwrap();
            self.gate.lock().recv().unwrap();
            Ok(vec![Tensor::new(
                self.name,
                vec![1],
                TensorData::Bytes(vec![self.name.as_bytes().to_vec()]),
            )])
        }
    }

    fn answered_by(r: Result<Vec<Tensor>, RuntimeError>) -> String {
        match &r.unwrap()[0].data {
            TensorData::Bytes(b) => String::from_utf8(b[0].clone()).unwrap(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_lone_run_takes_the_solo_instance_and_overlapping_runs_their_own() {
        let (started_tx, started) = std_mpsc::channel();
        let (go, gate) = std_mpsc::channel();
        let gate = Arc::new(parking_lot::Mutex::new(gate));
        let inst = |name| -> Box<dyn Instance> {
            Box::new(Tagged {
                name,
                sig: Signature {
                    inputs: vec![],
                    outputs: vec![],
                },
                started: started_tx.clone(),
                gate: gate.clone(),
            })
        };
        let pool = Arc::new(InstancePool::new(Instances {
            each: vec![inst("one"), inst("two")],
            solo: Some(inst("solo")),
        }));
        let run = |pool: &Arc<InstancePool>| {
            let pool = pool.clone();
            std::thread::spawn(move || pool.run(vec![], &Cancel::new()))
        };
        // Alone: the solo instance.
        let a = run(&pool);
        assert_eq!(started.recv().unwrap(), "solo");
        // Started while the solo run is in progress: one of the model's own instances.
        let b = run(&pool);
        assert_ne!(started.recv().unwrap(), "solo");
        go.send(()).unwrap();
        go.send(()).unwrap();
        let by = [
            answered_by(a.join().unwrap()),
            answered_by(b.join().unwrap()),
        ];
        assert_eq!(by[0], "solo", "{by:?}");
        assert_ne!(by[1], "solo", "{by:?}");
        // Nothing in progress again: the next lone run is solo's once more.
        let c = run(&pool);
        assert_eq!(started.recv().unwrap(), "solo");
        go.send(()).unwrap();
        assert_eq!(answered_by(c.join().unwrap()), "solo");
    }

    #[test]
    fn clients_of_the_last_batch_are_expected_until_they_come_back() {
        let r = Returning::default();
        assert_eq!(r.expected(), 0, "nothing answered yet: nobody to wait for");
        r.answered(3);
        assert_eq!(r.expected(), 3);
        r.arrived();
        r.arrived();
        assert_eq!(r.expected(), 1);
        r.arrived();
        r.arrived();
        assert_eq!(r.expected(), 0, "more came than were answered");
        // A lone client: its next request is the only one expected, and it has come.
        r.answered(1);
        r.arrived();
        assert_eq!(r.expected(), 0);
    }
}
