//! The smallest useful OpenAI proxy: axum in, reqwest out, nothing else.
//!
//! It is the benchmark's floor for "what does any gateway built on this
//! stack cost": no auth, no parsing, no routing, no accounting. keel's added
//! latency is compared against it in `bench/gateway_overhead.py`.
//!
//! Usage: `minimal_proxy LISTEN_ADDR UPSTREAM_BASE_URL WORKER_THREADS`

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;

#[derive(Clone)]
struct Upstream {
    client: reqwest::Client,
    url: String,
}

async fn forward(State(up): State<Upstream>, body: Bytes) -> Result<Bytes, StatusCode> {
    let response = up
        .client
        .post(&up.url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|_| StatusCode::BAD_GATEWAY)?;
    response.bytes().await.map_err(|_| StatusCode::BAD_GATEWAY)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() == 4,
        "usage: minimal_proxy LISTEN UPSTREAM_BASE_URL WORKERS"
    );
    let workers: usize = args[3].parse()?;
    let upstream = Upstream {
        client: reqwest::Client::builder().tcp_nodelay(true).build()?,
        url: format!("{}/chat/completions", args[2].trim_end_matches('/')),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let app = Router::new()
            .route("/v1/chat/completions", post(forward))
            .with_state(upstream);
        let listener = tokio::net::TcpListener::bind(&args[1]).await?;
        axum::serve(listener, app).await?;
        Ok(())
    })
}
