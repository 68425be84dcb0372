//! `keel keys …` and `keel tenants …`: manage tenants, users and API keys
//! directly in the store, for bootstrapping before the admin API is used.

use std::path::Path;

use anyhow::Context;
use clap::Subcommand;
use keel_core::{KeyId, TenantId, UserId};
use keel_store::{NewKey, Store};

use crate::config;

/// `keel keys` actions.
#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Create a key; its secret is printed once.
    Create {
        /// The tenant it belongs to.
        #[arg(long)]
        tenant: String,
        /// The user it belongs to, if any.
        #[arg(long)]
        user: Option<String>,
        /// A label for humans.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List keys (never their secrets).
    List {
        /// Only this tenant's keys.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a key by id.
    Revoke {
        /// The key id (`key_…`).
        id: String,
    },
}

/// `keel tenants` actions.
#[derive(Debug, Subcommand)]
pub enum TenantsAction {
    /// Create a tenant.
    Create {
        /// The tenant id.
        id: String,
        /// A display name.
        #[arg(long)]
        name: Option<String>,
    },
    /// List tenants.
    List,
    /// Create a user within a tenant.
    AddUser {
        /// The tenant id.
        tenant: String,
        /// The user id.
        id: String,
    },
}

/// Opens and migrates the store the config at `path` names.
pub(crate) async fn open(path: Option<&Path>) -> anyhow::Result<Store> {
    let config = config::load(path)?;
    let store = Store::connect(&config.app.store_url)
        .await
        .with_context(|| {
            format!(
                "could not open store {}",
                config::redact_url(&config.app.store_url)
            )
        })?;
    store
        .migrate()
        .await
        .context("could not migrate the store")?;
    Ok(store)
}

#[expect(clippy::print_stdout, reason = "CLI output")]
pub async fn keys(path: Option<&Path>, action: KeysAction) -> anyhow::Result<()> {
    let store = open(path).await?;
    match action {
        KeysAction::Create { tenant, user, name } => {
            let tenant_id = TenantId::new(tenant).context("invalid --tenant")?;
            let user_id = user
                .map(UserId::new)
                .transpose()
                .context("invalid --user")?;
            let created = store
                .create_key(NewKey {
                    tenant_id,
                    user_id,
                    name,
                })
                .await?;
            println!("id:     {}", created.key.id);
            println!("tenant: {}", created.key.tenant_id);
            println!("secret: {}", created.secret);
            println!("The secret is shown only now; store it safely.");
        }
        KeysAction::List { tenant } => {
            let tenant = tenant
                .map(TenantId::new)
                .transpose()
                .context("invalid --tenant")?;
            println!(
                "{:<22} {:<16} {:<12} {:<14} {:<8} name",
                "id", "tenant", "user", "prefix", "status"
            );
            for k in store.keys(tenant.as_ref()).await? {
                let status = if k.revoked_ms.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                let user = k
                    .user_id
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{:<22} {:<16} {:<12} {:<14} {:<8} {}",
                    k.id, k.tenant_id, user, k.prefix, status, k.name
                );
            }
        }
        KeysAction::Revoke { id } => {
            let id = KeyId::new(id).context("invalid key id")?;
            if store.revoke_key(&id).await? {
                println!("revoked {id}");
            } else {
                anyhow::bail!("no active key {id}");
            }
        }
    }
    store.close().await;
    Ok(())
}

#[expect(clippy::print_stdout, reason = "CLI output")]
pub async fn tenants(path: Option<&Path>, action: TenantsAction) -> anyhow::Result<()> {
    let store = open(path).await?;
    match action {
        TenantsAction::Create { id, name } => {
            let id = TenantId::new(id).context("invalid tenant id")?;
            let name = name.unwrap_or_else(|| id.to_string());
            store.create_tenant(&id, &name).await?;
            println!("created tenant {id}");
        }
        TenantsAction::List => {
            for t in store.tenants().await? {
                println!("{:<24} {}", t.id, t.name);
            }
        }
        TenantsAction::AddUser { tenant, id } => {
            let tenant = TenantId::new(tenant).context("invalid tenant id")?;
            let id = UserId::new(id).context("invalid user id")?;
            store.create_user(&tenant, &id, id.as_str()).await?;
            println!("created user {id} in tenant {tenant}");
        }
    }
    store.close().await;
    Ok(())
}
