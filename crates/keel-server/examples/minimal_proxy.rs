//! The smallest useful OpenAI proxy: axum in, hyper's pooled client out,
//! nothing else.
//!
//! It is the benchmark's floor for "what does any gateway built on keel's
//! HTTP stack cost": no auth, no parsing, no routing, no accounting. keel's
//! added latency is compared against it in `bench/gateway_overhead.py`.
//!
//! Usage: `minimal_proxy LISTEN_ADDR UPSTREAM_BASE_URL WORKER_THREADS`

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::routing::post;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[derive(Clone)]
struct Upstream {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
}

async fn forward(State(up): State<Upstream>, body: Bytes) -> Result<Bytes, StatusCode> {
    let request = http::Request::post(up.uri.clone())
        .header("content-type", "application/json")
        .body(Full::new(body))
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    let response = up
        .client
        .request(request)
        .await
        .map_err(|_| StatusCode::BAD_GATEWAY)?;
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|_| StatusCode::BAD_GATEWAY)?;
    Ok(body.to_bytes())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() == 4,
        "usage: minimal_proxy LISTEN UPSTREAM_BASE_URL WORKERS"
    );
    let workers: usize = args[3].parse()?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let upstream = Upstream {
        client: Client::builder(TokioExecutor::new()).build(connector),
        uri: format!("{}/chat/completions", args[2].trim_end_matches('/')).parse()?,
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
