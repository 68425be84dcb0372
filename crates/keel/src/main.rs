//! The `keel` command: serve the gateway, run the upstream simulator, manage
//! keys, report usage, or run the demo.
//!
//! This file only parses arguments and dispatches; each command lives in its
//! own module.

mod admin_cli;
mod config;
mod demo;
mod run_cli;
mod usage_cli;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of the system allocator: the request path allocates
/// many small buffers across threads, where glibc's malloc showed up at
/// about a tenth of keel's CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// keel: a production runtime for AI agents.
#[derive(Debug, Parser)]
#[command(name = "keel", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Listen address, overriding `server.listen`.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Run the OpenAI/Anthropic-compatible upstream simulator.
    Sim(keel_sim::SimConfig),
    /// Create, list and revoke API keys.
    Keys {
        /// The TOML config file (for the store location).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: admin_cli::KeysAction,
    },
    /// Create and list tenants and users.
    Tenants {
        /// The TOML config file (for the store location).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: admin_cli::TenantsAction,
    },
    /// Run keel against the simulator with a short multi-tenant workload.
    Demo(demo::DemoArgs),
    /// Show tokens and cost per hour, day or week and group, with
    /// week-over-week changes.
    Usage(usage_cli::UsageArgs),
    /// Register workflows, start and follow runs, answer waiting steps.
    Run(run_cli::RunArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(matches!(cli.command, Command::Demo(_)));
    // `serve` reads its config first: it sets the runtime's thread count.
    let (command, workers) = match cli.command {
        Command::Serve { config, listen } => {
            let mut loaded = config::load(Some(&config))
                .with_context(|| format!("invalid config {}", config.display()))?;
            if let Some(listen) = listen {
                loaded.listen = listen;
            }
            let workers = loaded.worker_threads;
            (Run::Serve(Box::new(loaded)), workers)
        }
        other => (Run::Other(other), None),
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    runtime.block_on(async {
        match command {
            Run::Serve(config) => serve(*config).await,
            Run::Other(command) => run(command).await,
        }
    })
}

/// A command ready to run on the runtime.
enum Run {
    Serve(Box<config::Config>),
    Other(Command),
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { .. } => anyhow::bail!("serve is started by main"),
        Command::Sim(config) => sim(config).await,
        Command::Keys { config, action } => admin_cli::keys(config.as_deref(), action).await,
        Command::Tenants { config, action } => admin_cli::tenants(config.as_deref(), action).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Usage(args) => usage_cli::run(args).await,
        Command::Run(args) => run_cli::run(args).await,
    }
}

/// Logs to stderr; `KEEL_LOG` (or `RUST_LOG`) sets the filter. The demo is
/// quiet by default so its progress display stays readable.
fn init_logging(quiet: bool) {
    let default = if quiet { "error" } else { "info" };
    let filter = std::env::var("KEEL_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default.to_owned());
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
}

async fn serve(config: config::Config) -> anyhow::Result<()> {
    tracing::info!(config = %config::summary(&config), "Effective configuration");
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("could not listen on {}", config.listen))?;
    let app = keel_server::App::start(config.app, listener)
        .await
        .context("keel failed to start")?;
    shutdown_signal().await;
    app.shutdown().await;
    Ok(())
}

async fn sim(config: keel_sim::SimConfig) -> anyhow::Result<()> {
    config.validate().context("invalid simulator options")?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("could not listen on {}", config.listen))?;
    tracing::info!(addr = %config.listen, "keel sim listening");
    keel_sim::Sim::new(config)
        .serve(listener, shutdown_signal())
        .await
        .context("sim failed")
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => _ = s.recv().await,
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
