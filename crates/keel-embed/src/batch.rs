//! Sharing forward passes between concurrent callers.
//!
//! [`Batcher`] queues requests and runs them through its embedder one
//! batch at a time: while a batch runs, new requests gather, and the next
//! batch takes all of them (up to a size limit). One caller alone waits for
//! nothing extra; many callers at once share passes, which is where a local
//! model gains throughput.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::{EmbedError, EmbedFuture, Embedder};

type Reply = oneshot::Sender<Result<Vec<Vec<f32>>, EmbedError>>;

/// An embedder whose concurrent calls are batched together.
#[derive(Debug, Clone)]
pub struct Batcher {
    inner: Arc<dyn Embedder>,
    queue: mpsc::Sender<(Vec<String>, Reply)>,
}

impl Batcher {
    /// Starts a batcher over `inner` taking up to `max_batch` texts per
    /// pass; it runs until every clone is dropped.
    pub fn spawn(inner: Arc<dyn Embedder>, max_batch: usize) -> Batcher {
        let (queue, mut requests) = mpsc::channel::<(Vec<String>, Reply)>(1024);
        let embedder = Arc::clone(&inner);
        let max_batch = max_batch.max(1);
        tokio::spawn(async move {
            while let Some(first) = requests.recv().await {
                let mut pending = vec![first];
                let mut texts: usize = pending[0].0.len();
                while texts < max_batch {
                    match requests.try_recv() {
                        Ok(next) => {
                            texts += next.0.len();
                            pending.push(next);
                        }
                        Err(_) => break,
                    }
                }
                let all: Vec<String> = pending.iter().flat_map(|(t, _)| t.clone()).collect();
                match embedder.embed(&all).await {
                    Ok(mut vectors) => {
                        for (texts, reply) in pending {
                            let rest = vectors.split_off(texts.len());
                            let _ = reply.send(Ok(std::mem::replace(&mut vectors, rest)));
                        }
                    }
                    Err(e) => {
                        for (_, reply) in pending {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
            }
        });
        Batcher { inner, queue }
    }
}

impl Embedder for Batcher {
    fn id(&self) -> &str {
        self.inner.id()
    }

    fn dimension(&self) -> usize {
        self.inner.dimension()
    }

    fn count_tokens(&self, texts: &[String]) -> u64 {
        self.inner.count_tokens(texts)
    }

    fn embed<'a>(&'a self, texts: &'a [String]) -> EmbedFuture<'a> {
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            self.queue
                .send((texts.to_vec(), reply))
                .await
                .map_err(|_| EmbedError::Closed)?;
            answer.await.map_err(|_| EmbedError::Closed)?
        })
    }
}
