//! `keel demo`: keel and its simulator in one process, a short multi-tenant
//! workload with a progress display, and a summary of what happened.
//!
//! The demo loads `examples/keel.toml` (compiled in), points its providers at
//! a simulator started on a free port with a faulty primary deployment, puts
//! the store in a temporary directory, and drives plain, streaming,
//! Anthropic-dialect and embedding requests from three tenants. Nothing needs
//! to be set up first.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use keel_core::TenantId;
use keel_sim::{FaultKind, FaultRule, SimConfig};
use keel_store::{NewKey, UsageQuery};
use serde_json::{Value, json};

use crate::config;

const EXAMPLE: &str = include_str!("../../../examples/keel.toml");
const TENANTS: [&str; 3] = ["acme", "globex", "initech"];

/// Options of `keel demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Requests to send.
    #[arg(long, default_value_t = 400)]
    requests: usize,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Requests started per second (the workload is paced so the breaker
    /// has time to open, probe and close while you watch).
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Share of requests the faulty deployment fails (0 to 1).
    #[arg(long, default_value_t = 0.6)]
    fault_rate: f64,
    /// Simulated time to first token, in milliseconds.
    #[arg(long, default_value_t = 30)]
    ttft_ms: u64,
}

/// What the client side saw.
struct Observed {
    latency_us: Histogram<u64>,
    overhead_us: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    by_deployment: BTreeMap<String, u64>,
    failovers: u64,
}

impl Observed {
    fn new() -> anyhow::Result<Observed> {
        Ok(Observed {
            latency_us: Histogram::new(3)?,
            overhead_us: Histogram::new(3)?,
            statuses: BTreeMap::new(),
            by_deployment: BTreeMap::new(),
            failovers: 0,
        })
    }
}

/// Runs the demo.
#[expect(clippy::print_stdout, reason = "the demo's report is its output")]
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.fault_rate),
        "--fault-rate must be 0 to 1"
    );
    anyhow::ensure!(
        args.concurrency > 0 && args.requests > 0,
        "--requests and --concurrency must be at least 1"
    );
    anyhow::ensure!(
        args.rate > 0.0 && args.rate.is_finite(),
        "--rate must be above 0"
    );

    // The simulator, with the "faulty-" upstream model failing often.
    let sim = keel_sim::spawn(SimConfig {
        ttft_ms: args.ttft_ms,
        tokens_per_sec: 400.0,
        completion_tokens: 24,
        faults: vec![FaultRule {
            kind: FaultKind::ServerError,
            rate: args.fault_rate,
            model_prefix: Some("faulty".into()),
        }],
        ..SimConfig::default()
    })
    .await
    .context("could not start the simulator")?;

    // keel on the example config, with its own store and a free port.
    let data = tempfile::tempdir().context("could not create a temporary directory")?;
    let text = EXAMPLE.replace("http://127.0.0.1:9000/v1", &sim.base_url());
    let mut config = config::load_str(&text).context("examples/keel.toml is invalid")?;
    config.app.store_url = format!("sqlite://{}", data.path().join("keel.db").display());
    config.app.retrieval.vectors_dir = data.path().join("vectors");
    config.app.server.admin_token = Some("demo-admin".into());
    for tenant in TENANTS {
        let id = TenantId::new(tenant)?;
        config.app.tenants.push((id.clone(), tenant.to_owned()));
        let key = NewKey {
            tenant_id: id,
            user_id: None,
            name: "demo".into(),
        };
        config
            .app
            .keys
            .push((key, format!("sk-keel-demo-{tenant}")));
    }
    // Limits that bite during the run: a small daily budget for initech and
    // a per-session request rate for globex.
    for spec in [
        r#"{"id":"initech-daily","scope":"tenant=initech","budget_usd":0.002,"period":"day"}"#,
        r#"{"id":"globex-session-rpm","scope":"tenant=globex,session=*","requests":15,"per":"1m"}"#,
    ] {
        let rule = serde_json::from_str::<keel_limits::RuleSpec>(spec)?.check()?;
        config.app.limits.config.rules.push(rule);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let app = keel_server::App::start(config.app, listener)
        .await
        .context("keel failed to start")?;
    let base = app.base_url();

    println!("keel demo: gateway {base}, simulator {}", sim.base_url());
    println!(
        "workload: {} requests, {} at a time, 3 tenants; deployment sim-flaky fails {:.0}% of calls\n",
        args.requests,
        args.concurrency,
        args.fault_rate * 100.0
    );

    let observed = Arc::new(Mutex::new(Observed::new()?));
    let bar = ProgressBar::new(args.requests as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let client = reqwest::Client::new();
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    futures::stream::iter(0..args.requests)
        .for_each_concurrent(args.concurrency, |i| {
            let (client, base, observed, bar) =
                (client.clone(), base.clone(), observed.clone(), bar.clone());
            async move {
                // Request i starts no earlier than i / rate seconds in.
                tokio::time::sleep_until((started + interval * i as u32).into()).await;
                one_request(&client, &base, i, &observed).await;
                bar.inc(1);
                if let Ok(o) = observed.lock() {
                    let errors: u64 = o
                        .statuses
                        .iter()
                        .filter(|(s, _)| **s >= 400)
                        .map(|(_, n)| n)
                        .sum();
                    bar.set_message(format!("failovers {} errors {}", o.failovers, errors));
                }
            }
        })
        .await;
    bar.finish();
    let wall = started.elapsed();

    // Let the ledger catch up, then read what it recorded.
    while app.state.ledger.pending() > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let store = app.state.store.clone();
    let breakers = client
        .get(format!("http://{}/admin/v1/breakers", app.addr))
        .bearer_auth("demo-admin")
        .send()
        .await?
        .json::<Value>()
        .await?;
    let metrics = client
        .get(format!("http://{}/metrics", app.addr))
        .send()
        .await?
        .text()
        .await?;

    let o = {
        let mut guard = observed
            .lock()
            .map_err(|_| anyhow::anyhow!("observer lock poisoned"))?;
        std::mem::replace(&mut *guard, Observed::new()?)
    };
    println!(
        "\n== requests ({:.1}s, {:.0} req/s)",
        wall.as_secs_f64(),
        args.requests as f64 / wall.as_secs_f64()
    );
    for (status, n) in &o.statuses {
        println!("  HTTP {status}: {n}");
    }
    println!(
        "\n== latency (client view)          p50 {:>8}   p90 {:>8}   p99 {:>8}",
        ms(o.latency_us.value_at_quantile(0.5)),
        ms(o.latency_us.value_at_quantile(0.9)),
        ms(o.latency_us.value_at_quantile(0.99))
    );
    println!(
        "== gateway overhead (keel's own)   p50 {:>8}   p90 {:>8}   p99 {:>8}",
        ms(o.overhead_us.value_at_quantile(0.5)),
        ms(o.overhead_us.value_at_quantile(0.9)),
        ms(o.overhead_us.value_at_quantile(0.99))
    );
    println!("\n== routing");
    for (deployment, n) in &o.by_deployment {
        println!("  served by {deployment:<12} {n}");
    }
    println!("  requests that failed over: {}", o.failovers);
    println!(
        "  breaker trips: {}",
        metric_sum(&metrics, "keel_breaker_trips_total")
    );
    for b in breakers["data"].as_array().into_iter().flatten() {
        println!(
            "  breaker {:<12} {}",
            b["deployment"].as_str().unwrap_or("?"),
            b["state"].as_str().unwrap_or("?")
        );
    }
    println!("\n== usage ledger (tokens and cost per tenant)");
    let mut total = 0i64;
    for tenant in TENANTS {
        let q = UsageQuery {
            tenant_id: Some(tenant.into()),
            ..UsageQuery::default()
        };
        let t = store.usage_totals(&q).await?;
        total += t.cost_micros;
        println!(
            "  {tenant:<8} requests {:>4}  errors {:>3}  prompt {:>6}  completion {:>6}  cost ${:.6}",
            t.requests,
            t.errors,
            t.prompt_tokens,
            t.completion_tokens,
            t.cost_micros as f64 / 1e6
        );
    }
    println!("  total cost ${:.6}", total as f64 / 1e6);

    println!("\n== limits");
    let refusals = |rule: &str| metric_sum_matching(&metrics, "keel_limit_refusals_total", rule);
    println!(
        "  initech-daily       budget $0.002/day   refused {:>4} (402)",
        refusals("initech-daily")
    );
    println!(
        "  globex-session-rpm  15 requests/min     refused {:>4} (429)",
        refusals("globex-session-rpm")
    );
    let account = client
        .get(format!(
            "http://{}/admin/v1/limits/accounts?rule=initech-daily&scope=tenant%3Dinitech",
            app.addr
        ))
        .bearer_auth("demo-admin")
        .send()
        .await?
        .json::<Value>()
        .await?;
    println!(
        "  initech spent ${} of $0.002 (never more than the cap)",
        account["spent_usd"].as_str().unwrap_or("?")
    );

    app.shutdown().await;
    sim.shutdown().await.ok();
    Ok(())
}

/// Sends request `i` of the workload and records what came back.
async fn one_request(client: &reqwest::Client, base: &str, i: usize, observed: &Mutex<Observed>) {
    let tenant = TENANTS[i % TENANTS.len()];
    let prompt = format!(
        "Question {} from {tenant}: summarise ticket #{}",
        i % 40,
        i % 17
    );
    let (path, body, stream) = match i % 10 {
        0..=4 => (
            "chat/completions",
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}),
            false,
        ),
        5 | 6 => (
            "chat/completions",
            json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": prompt}]}),
            true,
        ),
        7 => (
            "chat/completions",
            json!({"model": "claude-3-5-haiku", "max_tokens": 64, "messages": [{"role": "user", "content": prompt}]}),
            false,
        ),
        8 => (
            "chat/completions",
            json!({"model": "gpt-4o", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}]}),
            false,
        ),
        _ => (
            "embeddings",
            json!({"model": "text-embedding-3-small", "input": [prompt]}),
            false,
        ),
    };
    let mut body = body;
    if tenant == "initech" && path == "chat/completions" {
        // initech caps its answers, so its worst case fits its small budget.
        body["max_tokens"] = json!(64);
    }
    let started = Instant::now();
    let response = client
        .post(format!("{base}/{path}"))
        .bearer_auth(format!("sk-keel-demo-{tenant}"))
        .header("x-keel-session", format!("{tenant}-session-{}", i % 5))
        .json(&body)
        .send()
        .await;
    let Ok(response) = response else {
        record(observed, |o| *o.statuses.entry(0).or_default() += 1);
        return;
    };
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let deployment = header("x-keel-deployment");
    let attempts: u32 = header("x-keel-attempts")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let overhead_ms: Option<f64> = header("x-keel-overhead-ms").and_then(|v| v.parse().ok());
    if stream {
        let mut body = response.bytes_stream();
        while body.next().await.is_some() {}
    } else {
        _ = response.bytes().await;
    }
    let latency = started.elapsed();
    record(observed, |o| {
        *o.statuses.entry(status).or_default() += 1;
        _ = o.latency_us.record(latency.as_micros() as u64);
        if let Some(ms) = overhead_ms {
            _ = o.overhead_us.record((ms * 1000.0) as u64);
        }
        if let Some(d) = deployment {
            *o.by_deployment.entry(d).or_default() += 1;
        }
        if attempts > 1 || status >= 500 {
            o.failovers += u64::from(status < 400);
        }
    });
}

fn record(observed: &Mutex<Observed>, f: impl FnOnce(&mut Observed)) {
    if let Ok(mut o) = observed.lock() {
        f(&mut o);
    }
}

fn ms(us: u64) -> String {
    format!("{:.2}ms", us as f64 / 1000.0)
}

/// Sums the samples of a counter whose labels mention `needle`.
fn metric_sum_matching(text: &str, name: &str, needle: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Sums every sample of a counter in Prometheus text.
fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
