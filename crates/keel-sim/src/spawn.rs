//! Running a simulator in the background, for tests and `keel demo`.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::SimConfig;
use crate::sim::Sim;

/// A simulator serving on a local port in a background task.
///
/// Dropping it stops accepting connections, releases hung requests and aborts
/// the server task; [`SpawnedSim::shutdown`] stops it gracefully instead.
#[derive(Debug)]
pub struct SpawnedSim {
    /// The address the simulator listens on.
    pub addr: SocketAddr,
    /// A handle to the running simulator, for stats and config changes.
    pub sim: Sim,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl SpawnedSim {
    /// The OpenAI-style base URL, `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Stops accepting connections, waits for in-flight requests (hung ones
    /// are released) and returns the server's result.
    pub async fn shutdown(mut self) -> io::Result<()> {
        if let Some(stop) = self.stop.take() {
            // The server task may already be gone; then there is nothing to
            // signal and the join below reports how it ended.
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for SpawnedSim {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            self.sim.release_hung();
            task.abort();
        }
    }
}

/// Starts a simulator on `127.0.0.1` at a free port in a background tokio
/// task; `config.listen` is replaced by the address actually bound.
pub async fn spawn(mut config: SimConfig) -> io::Result<SpawnedSim> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    config.listen = addr;

    let sim = Sim::new(config);
    let (stop, stopped) = oneshot::channel::<()>();
    let signal = async move {
        // A dropped sender also means stop.
        let _ = stopped.await;
    };
    let task = tokio::spawn(sim.clone().serve(listener, signal));

    Ok(SpawnedSim {
        addr,
        sim,
        stop: Some(stop),
        task: Some(task),
    })
}
