//! Identical requests in flight at once share one upstream call.
//!
//! The first request for an exact key leads: it calls the upstream as a
//! miss would. Requests with the same key that arrive before it lands
//! follow: they wait for the leader's answer and serve it as an exact hit,
//! so a burst of identical questions costs one generation and every client
//! sees the same answer. A leader whose answer cannot be cached (an error,
//! a cut response) lands empty, and its followers go upstream themselves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::entry::Entry;

type Landing = Option<Arc<Entry>>;

/// The exact keys being generated now.
#[derive(Debug, Default, Clone)]
pub struct Flights {
    open: Arc<Mutex<HashMap<String, watch::Receiver<Landing>>>>,
}

/// A request's place in its key's flight.
#[derive(Debug)]
pub enum Seat {
    /// Call the upstream, then [`Leader::land`] the answer.
    Leader(Leader),
    /// Wait for the leader with [`Follower::wait`].
    Follower(Follower),
}

/// The request generating an answer others wait for.
#[derive(Debug)]
pub struct Leader {
    key: String,
    flights: Flights,
    sender: Option<watch::Sender<Landing>>,
}

/// A request waiting for the leader's answer.
#[derive(Debug)]
pub struct Follower {
    receiver: watch::Receiver<Landing>,
}

impl Flights {
    /// Joins the flight for `key`, leading it when there is none.
    pub fn join(&self, key: &str) -> Seat {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(receiver) = open.get(key) {
            return Seat::Follower(Follower {
                receiver: receiver.clone(),
            });
        }
        let (sender, receiver) = watch::channel(None);
        open.insert(key.to_owned(), receiver);
        Seat::Leader(Leader {
            key: key.to_owned(),
            flights: self.clone(),
            sender: Some(sender),
        })
    }

    /// Keys being generated now.
    pub fn len(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Whether nothing is being generated.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn close(&self, key: &str) {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }
}

impl Leader {
    /// Hands the answer to every follower, those waiting now and those
    /// that join until the leader is dropped (while its answer is being
    /// stored, say).
    pub fn share(&mut self, entry: Arc<Entry>) {
        if let Some(sender) = &self.sender {
            sender.send_replace(Some(entry));
        }
    }

    /// Hands the answer to every follower (`None`: they must generate
    /// their own) and ends the flight.
    pub fn land(mut self, entry: Option<Arc<Entry>>) {
        if let Some(entry) = entry {
            self.share(entry);
        }
    }
}

impl Drop for Leader {
    /// Ends the flight; a leader dropped without sharing an answer (its
    /// request failed or was abandoned) lets its followers go upstream.
    fn drop(&mut self) {
        self.flights.close(&self.key);
        self.sender.take();
    }
}

impl Follower {
    /// The leader's answer, or `None` when it had none to share or did not
    /// land within `patience`.
    pub async fn wait(mut self, patience: Duration) -> Option<Arc<Entry>> {
        let landed = tokio::time::timeout(patience, self.receiver.wait_for(Option::is_some)).await;
        match landed {
            Ok(Ok(entry)) => entry.clone(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::chat::ChatCompletion;

    fn entry() -> Arc<Entry> {
        let response: ChatCompletion = serde_json::from_value(serde_json::json!({
            "id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": []
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        Arc::new(Entry {
            context: "c".to_owned(),
            question: None,
            model: "m".to_owned(),
            response,
            cost_micros: 1,
            prompt_tokens: 1,
            completion_tokens: 1,
            created_ms: 0,
            fresh_until_ms: 1,
            keep_until_ms: 1,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn followers_get_the_leaders_answer() {
        let flights = Flights::default();
        let Seat::Leader(leader) = flights.join("k") else {
            panic!("first is the leader")
        };
        let followers: Vec<_> = (0..3)
            .map(|_| match flights.join("k") {
                Seat::Follower(f) => tokio::spawn(f.wait(Duration::from_secs(60))),
                Seat::Leader(_) => panic!("a second leader"),
            })
            .collect();
        leader.land(Some(entry()));
        for f in followers {
            assert_eq!(f.await.ok().flatten(), Some(entry()));
        }
        assert!(flights.is_empty());
        assert!(matches!(flights.join("k"), Seat::Leader(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_shared_answer_serves_late_followers_until_the_leader_ends() {
        let flights = Flights::default();
        let Seat::Leader(mut leader) = flights.join("k") else {
            panic!("first is the leader")
        };
        leader.share(entry());
        let Seat::Follower(late) = flights.join("k") else {
            panic!("the flight is still open")
        };
        assert_eq!(late.wait(Duration::from_secs(1)).await, Some(entry()));
        drop(leader);
        assert!(matches!(flights.join("k"), Seat::Leader(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_leader_frees_its_followers() {
        let flights = Flights::default();
        let leader = flights.join("k");
        let Seat::Follower(follower) = flights.join("k") else {
            panic!("second follows")
        };
        drop(leader);
        assert_eq!(follower.wait(Duration::from_secs(60)).await, None);
        assert!(flights.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn followers_stop_waiting_after_their_patience() {
        let flights = Flights::default();
        let _leader = flights.join("k");
        let Seat::Follower(follower) = flights.join("k") else {
            panic!("second follows")
        };
        assert_eq!(follower.wait(Duration::from_secs(5)).await, None);
    }
}
