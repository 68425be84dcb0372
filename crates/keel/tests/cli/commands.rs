//! The `keel` binary as a user runs it: key and tenant management against a
//! store, and configuration refused at start with the key named.

#![expect(
    clippy::expect_used,
    reason = "test helpers fail the test on a broken fixture"
)]

use std::path::Path;
use std::process::{Command, Output};

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
