//! `keel run`: register workflows, start runs and follow them, answer
//! waiting steps and cancel, against a running `keel serve` over HTTP.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

/// `keel run` options.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The server's address.
    #[arg(
        long,
        env = "KEEL_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// An API key of the tenant the workflows belong to.
    #[arg(long, env = "KEEL_API_KEY", global = true, hide_env_values = true)]
    key: Option<String>,
    #[command(subcommand)]
    action: RunAction,
}

/// What `keel run` does.
#[derive(Debug, Subcommand)]
pub enum RunAction {
    /// Register a definition file (YAML or JSON) as a workflow's newest
    /// version.
    Register {
        /// The definition file.
        file: std::path::PathBuf,
    },
    /// Start a run of a workflow.
    Start {
        /// The workflow's name.
        workflow: String,
        /// The input: a JSON object, or `@FILE` to read one.
        #[arg(long, default_value = "{}")]
        input: String,
        /// Starting again with the same key returns the same run.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Follow the run until it ends; exit non-zero unless it succeeded.
        #[arg(long)]
        wait: bool,
    },
    /// Show a run with its steps.
    Status {
        /// The run's id.
        run: String,
        /// Print the whole run (steps and attempts) as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List recent runs.
    List {
        /// Only runs with this status.
        #[arg(long)]
        status: Option<String>,
    },
    /// Answer a step waiting for a person.
    Signal {
        /// The run's id.
        run: String,
        /// The waiting step.
        step: String,
        /// The answer, as JSON.
        #[arg(long, default_value = "true")]
        output: String,
    },
    /// Cancel a running run.
    Cancel {
        /// The run's id.
        run: String,
    },
}

/// An HTTP client for keel's workflow routes.
struct Client {
    http: reqwest::Client,
    url: String,
    key: String,
}

impl Client {
    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request
            .bearer_auth(&self.key)
            .send()
            .await
            .with_context(|| format!("cannot reach keel at {}", self.url))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let message = body["error"]["message"].as_str().unwrap_or("no message");
            bail!("keel answered {status}: {message}");
        }
        Ok(body)
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.get(format!("{}/v1{path}", self.url)))
            .await
    }

    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.post(format!("{}/v1{path}", self.url)).json(body))
            .await
    }
}

/// Runs `keel run`.
#[expect(clippy::print_stdout, reason = "CLI output")]
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let key = args
        .key
        .context("no API key: pass --key or set KEEL_API_KEY")?;
    let client = Client {
        http: reqwest::Client::new(),
        url: args.url.trim_end_matches('/').to_owned(),
        key,
    };
    match args.action {
        RunAction::Register { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let request = client
                .http
                .post(format!("{}/v1/workflows", client.url))
                .header("content-type", "application/yaml")
                .body(text);
            let stored = client.send(request).await?;
            println!(
                "registered {} version {}",
                stored["name"].as_str().unwrap_or("?"),
                stored["version"]
            );
        }
        RunAction::Start {
            workflow,
            input,
            idempotency_key,
            wait,
        } => {
            let input = parse_input(&input)?;
            let mut body = json!({"workflow": workflow, "input": input});
            if let Some(key) = idempotency_key {
                body["idempotency_key"] = json!(key);
            }
            let run = client.post("/runs", &body).await?;
            let id = run["id"]
                .as_str()
                .context("keel answered a run without an id")?
                .to_owned();
            println!("{id}");
            if wait {
                let view = follow(&client, &id).await?;
                print!("{}", summary(&view));
                if view["status"] != "succeeded" {
                    bail!("run {id} ended {}", view["status"]);
                }
            }
        }
        RunAction::Status { run, json } => {
            let view = client.get(&format!("/runs/{run}")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print!("{}", summary(&view));
            }
        }
        RunAction::List { status } => {
            let query = status.map(|s| format!("?status={s}")).unwrap_or_default();
            let runs = client.get(&format!("/runs{query}")).await?;
            for run in runs["data"].as_array().into_iter().flatten() {
                println!(
                    "{}  {:<10} {} v{}",
                    run["id"].as_str().unwrap_or("?"),
                    run["status"].as_str().unwrap_or("?"),
                    run["workflow"].as_str().unwrap_or("?"),
                    run["version"]
                );
            }
        }
        RunAction::Signal { run, step, output } => {
            let output: Value = serde_json::from_str(&output).context("--output must be JSON")?;
            client
                .post(
                    &format!("/runs/{run}/signal"),
                    &json!({"step": step, "output": output}),
                )
                .await?;
            println!("answered {step} of {run}");
        }
        RunAction::Cancel { run } => {
            client
                .post(&format!("/runs/{run}/cancel"), &json!({}))
                .await?;
            println!("cancelled {run}");
        }
    }
    Ok(())
}

/// The input of `--input`: JSON, or `@FILE` holding JSON.
fn parse_input(input: &str) -> anyhow::Result<Value> {
    let text = match input.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?
        }
        None => input.to_owned(),
    };
    let value: Value = serde_json::from_str(&text).context("--input must be a JSON object")?;
    if !value.is_object() {
        bail!("--input must be a JSON object, got {value}");
    }
    Ok(value)
}

/// Polls the run until it ends.
async fn follow(client: &Client, id: &str) -> anyhow::Result<Value> {
    loop {
        let view = client.get(&format!("/runs/{id}")).await?;
        if view["status"] != "running" {
            return Ok(view);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A run as text: its status, each step with its attempts, and its output
/// or error.
fn summary(view: &Value) -> String {
    let mut out = format!(
        "run {} ({} v{}): {}\n",
        view["id"].as_str().unwrap_or("?"),
        view["workflow"].as_str().unwrap_or("?"),
        view["version"],
        view["status"].as_str().unwrap_or("?"),
    );
    for step in view["steps"].as_array().into_iter().flatten() {
        let key = step["key"].as_str().unwrap_or("?");
        if key == "$end" {
            continue;
        }
        let mut line = format!(
            "  {key:<20} {:<9} attempts {}",
            step["status"].as_str().unwrap_or("?"),
            step["attempts"]
        );
        if let Some(error) = step["error"].as_str().filter(|e| !e.is_empty()) {
            line.push_str(&format!("  ({error})"));
        }
        if let Some(prompt) = step["detail"]["prompt"]
            .as_str()
            .filter(|_| step["status"] == "waiting")
        {
            line.push_str(&format!("  asks: {prompt}"));
        }
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str(&format!(
        "  tokens {}  cost ${:.6}\n",
        view["tokens_used"],
        view["cost"].as_u64().unwrap_or(0) as f64 / 1e6
    ));
    if let Some(error) = view["error"].as_str() {
        out.push_str(&format!("  error: {error}\n"));
    }
    if !view["output"].is_null() {
        out.push_str(&format!("  output: {}\n", view["output"]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_must_be_a_json_object() {
        assert_eq!(parse_input(r#"{"a": 1}"#).unwrap(), json!({"a": 1}));
        assert!(parse_input("[1]").is_err());
        assert!(parse_input("{oops").is_err());
        assert!(parse_input("@/no/such/file").is_err());
    }

    #[test]
    fn the_summary_shows_steps_errors_and_questions() {
        let view = json!({
            "id": "run_1", "workflow": "w", "version": 2, "status": "running",
            "tokens_used": 15, "cost": 250, "output": null,
            "steps": [
                {"key": "draft", "status": "failed", "attempts": 3, "error": "429"},
                {"key": "approve", "status": "waiting", "attempts": 1, "detail": {"prompt": "Refund?"}},
                {"key": "$end", "status": "pending", "attempts": 0}
            ]
        });
        let text = summary(&view);
        assert!(text.starts_with("run run_1 (w v2): running\n"), "{text}");
        assert!(
            text.contains("draft                failed    attempts 3  (429)"),
            "{text}"
        );
        assert!(text.contains("asks: Refund?"), "{text}");
        assert!(!text.contains("$end"));
        assert!(text.contains("cost $0.000250"));
    }
}
