//! Transfer threads: the daemon's own runtime plus `n - 1` threads, each running a
//! current-thread tokio runtime. Quinn drives a connection (packet crypto, acks, loss
//! recovery) on the runtime that dials or accepts it, so connections spread over these
//! threads spread a transfer's CPU work over cores; the endpoint's socket stays on the
//! daemon's runtime, which only receives datagrams and routes them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use lanspread_proto::close_code;
use lanspread_transfer::TransferError;

use crate::DaemonError;

/// The runtimes connections are driven on; index 0 is the daemon's own. Each extra thread
/// also owns a dial-only endpoint (its own UDP socket) for the data connections it
/// dials, so their packets are received, decrypted and hashed on that thread without a
/// hop through the daemon's socket.
pub struct TransferThreads {
    handles: Vec<Handle>,
    endpoints: Vec<quinn::Endpoint>,
    next: AtomicUsize,
    running: Mutex<Vec<Running>>,
}

struct Running {
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl TransferThreads {
    /// Starts `n - 1` threads next to the current runtime (`n` ≥ 1), each with the
    /// endpoint `data_endpoint` binds inside its runtime. Must be called inside the
    /// daemon's runtime.
    pub fn start(
        n: usize,
        data_endpoint: impl Fn() -> Result<quinn::Endpoint, TransferError>,
    ) -> Result<Self, DaemonError> {
        let mut handles = vec![Handle::current()];
        let mut endpoints = Vec::new();
        let mut running = Vec::new();
        for i in 1..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| DaemonError::io("transfer thread runtime", e))?;
            handles.push(runtime.handle().clone());
            {
                // The socket registers with, and quinn spawns its driver on, this runtime.
                let _inside = runtime.enter();
                endpoints.push(data_endpoint()?);
            }
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("lanspread-xfer-{i}"))
                .spawn(move || {
                    // The runtime runs its tasks while this thread waits for the stop.
                    let _ = runtime.block_on(stopped);
                    runtime.shutdown_timeout(Duration::from_secs(1));
                })
                .map_err(|e| DaemonError::io("transfer thread", e))?;
            running.push(Running { stop, thread });
        }
        Ok(Self {
            handles,
            endpoints,
            next: AtomicUsize::new(0),
            running: Mutex::new(running),
        })
    }

    /// How many runtimes (the daemon's included).
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Runtime `i` (modulo their number).
    pub fn get(&self, i: usize) -> &Handle {
        &self.handles[i % self.handles.len()]
    }

    /// The dial-only endpoint of thread `i` (modulo their number); `None` for the
    /// daemon's own runtime, which dials from the daemon's endpoint.
    pub fn endpoint(&self, i: usize) -> Option<&quinn::Endpoint> {
        match i % self.handles.len() {
            0 => None,
            j => self.endpoints.get(j - 1),
        }
    }

    /// The next runtime in turn, for a connection being accepted.
    pub fn next(&self) -> &Handle {
        self.get(self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// Stops the extra threads (their endpoints close, their tasks are dropped) and waits
    /// for them, boundedly.
    pub fn stop(&self) {
        for e in &self.endpoints {
            e.close(quinn::VarInt::from_u32(close_code::GOODBYE), b"goodbye");
        }
        let running = std::mem::take(&mut *self.running.lock().unwrap_or_else(|p| p.into_inner()));
        for r in running {
            let _ = r.stop.send(());
            // The last handle may be dropped by a task of one of these threads: never
            // join the current thread (it ends once its runtime returns).
            if r.thread.thread().id() != std::thread::current().id() {
                let _ = r.thread.join();
            }
        }
    }
}

impl Drop for TransferThreads {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_run_on_their_own_threads_and_stop() {
        let id = lanspread_transfer::Identity::ephemeral().unwrap();
        let tuning = lanspread_transfer::TransportTuning::default();
        let bind = "127.0.0.1:0".parse().unwrap();
        let client = lanspread_transfer::data_client_config(&id, &tuning).unwrap();
        let make = || lanspread_transfer::make_data_endpoint(bind, &tuning, client.clone());
        let threads = TransferThreads::start(3, make).unwrap();
        assert_eq!(threads.len(), 3);
        assert!(threads.endpoint(0).is_none() && threads.endpoint(3).is_none());
        let (a, b) = (threads.endpoint(1).unwrap(), threads.endpoint(2).unwrap());
        assert_ne!(a.local_addr().unwrap(), b.local_addr().unwrap());
        let mut names = Vec::new();
        for i in 0..3 {
            let name = threads
                .get(i)
                .spawn(async { std::thread::current().name().map(String::from) })
                .await
                .unwrap();
            names.push(name.unwrap_or_default());
        }
        assert_eq!(names[1], "lanspread-xfer-1");
        assert_eq!(names[2], "lanspread-xfer-2");
        assert_ne!(names[0], names[1]);
        // Round robin over all three.
        let picks: Vec<_> = (0..4).map(|_| threads.next().id()).collect();
        assert_eq!(picks[0], picks[3]);
        assert_ne!(picks[0], picks[1]);
        assert_ne!(picks[1], picks[2]);
        // After a stop, the extra runtimes are gone: a task spawned there never runs.
        threads.stop();
        let orphan = threads.get(1).spawn(async { 1 });
        assert!(orphan.await.is_err());
    }
}
