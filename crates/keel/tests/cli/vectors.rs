//! The vector store survives `kill -9`: a `keel serve` process is killed
//! while clients are writing, and after a restart on the same data
//! directory every acknowledged write is there (snapshots are taken along
//! the way, so a kill can land mid-snapshot too).

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test on a broken fixture"
)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::process::Server;

const KEY: &str = "sk-keel-vector-crash";
const DIM: usize = 32;

async fn serve(dir: &Path) -> Server {
    let config = format!(
        r#"
[store]
data_dir = "{data}"

[vectors]
snapshot_wal_mb = 1

[[tenants]]
id = "t1"

[[keys]]
tenant = "t1"
secret = "{KEY}"
"#,
        data = dir.join("data").display(),
    );
    let path = dir.join("keel.toml");
    std::fs::write(&path, config).unwrap();
    let server = Server::spawn(&path, &[]);
    server.ready().await;
    server
}

fn vector(i: usize) -> Vec<f32> {
    (0..DIM)
        .map(|d| ((i * 31 + d * 7) % 17) as f32 + 1.0)
        .collect()
}

#[tokio::test]
async fn acknowledged_vector_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let server = serve(dir.path()).await;
    let spec = json!({"name": "crash", "dimension": DIM, "fields": {"batch": "integer"}});
    let r = client
        .post(format!("{}/v1/collections", server.base))
        .bearer_auth(KEY)
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // Four writers send batches until the process dies; each records the
    // batches keel acknowledged.
    let acknowledged: Arc<Mutex<Vec<usize>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..4 {
        let (client, base, acked) = (
            client.clone(),
            format!("{}/v1", server.base),
            Arc::clone(&acknowledged),
        );
        writers.push(tokio::spawn(async move {
            for round in 0.. {
                let batch = round * 4 + w;
                let points: Vec<Value> = (0..50)
                    .map(|i| json!({"id": format!("{batch}-{i}"), "vector": vector(batch * 50 + i), "payload": {"batch": batch}}))
                    .collect();
                let sent = client
                    .post(format!("{base}/collections/crash/points"))
                    .bearer_auth(KEY)
                    .json(&json!({"points": points}))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 200 => acked.lock().unwrap().push(batch),
                    _ => return,
                }
            }
        }));
    }
    // Kill once enough has been written to cross several snapshots.
    while acknowledged.lock().unwrap().len() < 300 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(server);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acknowledged.lock().unwrap().clone();
    let collection = dir.path().join("data/vectors/t1/crash");
    assert!(
        collection.join("snapshot").exists() || collection.join("snapshot.old").exists(),
        "a snapshot was taken before the kill"
    );

    let server = serve(dir.path()).await;
    for batch in &acked {
        let ids: Vec<String> = (0..50).map(|i| format!("{batch}-{i}")).collect();
        let r: Value = client
            .post(format!("{}/v1/collections/crash/points/get", server.base))
            .bearer_auth(KEY)
            .json(&json!({"ids": ids}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            r["points"].as_array().unwrap().len(),
            50,
            "batch {batch} was acknowledged but is missing"
        );
    }
    // Filters and search work on the recovered collection.
    let batch = acked[0];
    let query = json!({"vector": vector(batch * 50 + 3), "k": 5, "filter": {"must": [{"key": "batch", "match": {"value": batch}}]}});
    let r: Value = client
        .post(format!("{}/v1/collections/crash/query", server.base))
        .bearer_auth(KEY)
        .json(&query)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["points"].as_array().unwrap().len(), 5, "{r}");
    assert!(
        r["points"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["payload"]["batch"] == batch)
    );
}
