//! The `keel` binary as a user runs it: key and tenant management against a
//! store, usage reports over a seeded ledger, and configuration refused at
//! start with the key named.

#![expect(
    clippy::expect_used,
    reason = "test helpers fail the test on a broken fixture"
)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use keel_store::{Store, UsageRecord};
use serde_json::Value;

fn keel(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keel"));
    command.args(args).current_dir(dir).env_remove("KEEL_LOG");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("keel runs")
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn write_config(dir: &Path, extra: &str) {
    let config = format!(
        "[store]\ndata_dir = \"{}\"\n{extra}",
        dir.join("data").display()
    );
    std::fs::write(dir.join("keel.toml"), config).expect("config written");
}

#[test]
fn manages_tenants_and_keys_without_ever_listing_secrets() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "");
    let run = |args: &[&str]| {
        let mut full = args.to_vec();
        full.extend(["--config", "keel.toml"]);
        let output = keel(dir.path(), &full, &[]);
        let (out, err) = text(&output);
        assert!(output.status.success(), "keel {args:?} failed: {err}");
        out
    };

    run(&["tenants", "create", "acme"]);
    assert!(run(&["tenants", "list"]).contains("acme"));
    run(&["tenants", "add-user", "acme", "alice"]);

    let created = run(&[
        "keys", "create", "--tenant", "acme", "--user", "alice", "--name", "ci",
    ]);
    let field = |name: &str| {
        created
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap()
            .to_owned()
    };
    let (id, secret) = (field("id:"), field("secret:"));
    assert!(secret.starts_with("sk-keel-"), "{created}");

    let listed = run(&["keys", "list", "--tenant", "acme"]);
    assert!(
        listed.contains(&id) && listed.contains("active"),
        "{listed}"
    );
    assert!(
        !listed.contains(&secret),
        "a listing must never show the secret"
    );

    run(&["keys", "revoke", &id]);
    assert!(run(&["keys", "list"]).contains("revoked"));
    let again = keel(
        dir.path(),
        &["keys", "revoke", &id, "--config", "keel.toml"],
        &[],
    );
    assert!(!again.status.success());
    assert!(text(&again).1.contains(&id));
}

#[test]
fn refuses_unknown_tenants_for_new_keys() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "");
    let output = keel(
        dir.path(),
        &[
            "keys",
            "create",
            "--tenant",
            "ghost",
            "--config",
            "keel.toml",
        ],
        &[],
    );
    assert!(!output.status.success());
    assert!(text(&output).1.contains("ghost"), "{}", text(&output).1);
}

#[test]
fn serve_refuses_bad_config_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "[server]\nmax_body_bytes = 10\n");
    let output = keel(dir.path(), &["serve", "--config", "keel.toml"], &[]);
    assert!(!output.status.success());
    assert!(
        text(&output).1.contains("server.max_body_bytes"),
        "{}",
        text(&output).1
    );

    let output = keel(dir.path(), &["serve", "--config", "missing.toml"], &[]);
    assert!(
        text(&output).1.contains("missing.toml"),
        "{}",
        text(&output).1
    );
}

#[test]
fn environment_overrides_config_keys() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "[server]\nlisten = \"127.0.0.1:0\"\n");
    // The file is valid; the override makes it invalid, which proves the
    // override was applied on top of the file and names its key.
    let output = keel(
        dir.path(),
        &["serve", "--config", "keel.toml"],
        &[("KEEL__SERVER__LISTEN", "not-an-address")],
    );
    assert!(!output.status.success());
    let (_, err) = text(&output);
    assert!(
        err.contains("server.listen") && err.contains("not-an-address"),
        "{err}"
    );

    let output = keel(
        dir.path(),
        &["serve", "--config", "keel.toml"],
        &[("KEEL__SERVER__NO_SUCH_KEY", "1")],
    );
    assert!(!output.status.success());
    assert!(
        text(&output).1.contains("no_such_key"),
        "{}",
        text(&output).1
    );
}

/// Writes ledger rows into the SQLite store [`write_config`] points at, as
/// the gateway's ledger would.
fn seed_usage(dir: &Path, rows: &[UsageRecord]) {
    let url = format!("sqlite://{}", dir.join("data").join("keel.db").display());
    let runtime = tokio::runtime::Runtime::new().expect("a runtime starts");
    runtime.block_on(async {
        let store = Store::connect(&url).await.expect("the store opens");
        store.migrate().await.expect("the store migrates");
        store
            .insert_usage(rows)
            .await
            .expect("the rows are written");
        store.close().await;
    });
}

/// A successful request by `user` of `tenant`, `hours` ago: 100 prompt and
/// 50 completion tokens for $0.0015.
fn request(id: &str, tenant: &str, user: &str, hours_ago: i64) -> UsageRecord {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_millis() as i64;
    UsageRecord {
        request_id: id.to_owned(),
        ts_ms: now_ms - hours_ago * 3_600_000,
        tenant_id: tenant.to_owned(),
        user_id: Some(user.to_owned()),
        key_id: None,
        session: None,
        workflow: None,
        model: "gpt-4o-mini".to_owned(),
        deployment: None,
        provider: None,
        prompt_tokens: 100,
        completion_tokens: 50,
        cost_micros: 1_500,
        latency_us: 1_000,
        overhead_us: 50,
        ttft_us: None,
        status: 200,
        error_code: None,
        stream: false,
        attempts: 1,
        cache: None,
        saved_prompt_tokens: 0,
        saved_completion_tokens: 0,
        saved_cost_micros: 0,
    }
}

#[test]
fn usage_reports_a_tenants_users_per_week_and_week_over_week() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "");
    seed_usage(
        dir.path(),
        &[
            request("a1", "acme", "alice", 1),
            request("a2", "acme", "alice", 2),
            request("a3", "acme", "alice", 8 * 24),
            request("b1", "acme", "bob", 3),
            request("c1", "globex", "carol", 1),
        ],
    );
    let usage = |extra: &[&str]| {
        let mut args = vec![
            "usage",
            "--config",
            "keel.toml",
            "--tenant",
            "acme",
            "--by",
            "user",
            "--bucket",
            "week",
            "--since",
            "14d",
        ];
        args.extend(extra);
        let output = keel(dir.path(), &args, &[]);
        let (out, err) = text(&output);
        assert!(output.status.success(), "keel usage failed: {err}");
        out
    };

    let table = usage(&[]);
    assert!(table.starts_with("usage per week (UTC) since "), "{table}");
    assert!(!table.contains("carol"), "another tenant's user: {table}");
    let (trend, weeks) = table
        .split_once("week over week")
        .expect("a week-over-week section");
    assert!(
        trend.lines().any(|l| l.starts_with("alice ")) && trend.contains("\nbob "),
        "{table}"
    );
    // alice: 2 requests, 300 tokens, $0.003 this week against 1, 150,
    // $0.0015; bob is new this week.
    let alice = weeks
        .lines()
        .find(|l| l.starts_with("alice"))
        .expect("alice");
    let cells: Vec<&str> = alice.split_whitespace().collect();
    assert_eq!(
        cells,
        [
            "alice",
            "2",
            "1",
            "+100.0",
            "%",
            "300",
            "150",
            "+100.0",
            "%",
            "$0.003000",
            "$0.001500",
            "+100.0",
            "%"
        ],
        "{table}"
    );
    let bob = weeks.lines().find(|l| l.starts_with("bob")).expect("bob");
    assert!(bob.ends_with("new"), "{table}");

    let json: Value = serde_json::from_str(&usage(&["--json"])).expect("usage --json is JSON");
    assert_eq!(json["object"], "usage.trend");
    let requests = |user: &str| -> i64 {
        json["data"]
            .as_array()
            .expect("data is a list")
            .iter()
            .filter(|e| e["group"] == user)
            .map(|e| e["requests"].as_i64().unwrap_or_default())
            .sum()
    };
    assert_eq!((requests("alice"), requests("bob")), (3, 1), "{json}");
    assert_eq!(json["week_over_week"][0]["group"], "alice", "{json}");
    assert_eq!(json["week_over_week"][0]["requests_change"], 1.0, "{json}");
}

#[test]
fn usage_refuses_an_unknown_bucket_naming_the_choices() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "");
    let output = keel(
        dir.path(),
        &["usage", "--config", "keel.toml", "--bucket", "month"],
        &[],
    );
    assert!(!output.status.success());
    let (_, err) = text(&output);
    assert!(err.contains("hour, day, week"), "{err}");
}

#[test]
fn serve_refuses_a_bad_workflow_file_naming_the_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let workflow = dir.path().join("w.yaml");
    std::fs::write(&workflow, "name: w\nsteps:\n  - id: a\n    kind: lmm\n").unwrap();
    let flow = format!(
        "[[flow.workflows]]\ntenant = \"t1\"\nfile = \"{}\"",
        workflow.display()
    );
    for (extra, expected) in [
        (flow.as_str(), "key `flow.workflows[0].file`"),
        ("[flow]\nlease_ms = 10", "key `flow.lease_ms`"),
        (
            "[flow]\ntenant_concurrency = 0",
            "key `flow.tenant_concurrency`",
        ),
    ] {
        write_config(dir.path(), extra);
        let output = keel(dir.path(), &["serve", "--config", "keel.toml"], &[]);
        let (_, err) = text(&output);
        assert!(!output.status.success());
        assert!(err.contains(expected), "{extra}: {err}");
    }
    write_config(dir.path(), &flow);
    let output = keel(dir.path(), &["serve", "--config", "keel.toml"], &[]);
    let (_, err) = text(&output);
    assert!(err.contains("line 4 column 5: steps[0].kind"), "{err}");
}
