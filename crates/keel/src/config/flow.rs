//! The `[flow]` section: the workflow engine's leases, batches, polling,
//! retention, and workflow files registered at start.

use std::time::Duration;

use anyhow::{Context, bail};
use keel_core::TenantId;
use keel_flow::EngineConfig;
use keel_server::FlowSetup;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawFlow {
    enabled: bool,
    lease_ms: u64,
    poll_interval_ms: u64,
    batch: u32,
    per_tenant: u32,
    tenant_concurrency: Option<u32>,
    retention_days: u64,
    workflows: Vec<RawWorkflowFile>,
}

/// A definition file registered for a tenant at every start.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkflowFile {
    tenant: String,
    file: String,
}

impl Default for RawFlow {
    fn default() -> Self {
        let engine = EngineConfig::default();
        RawFlow {
            enabled: true,
            lease_ms: u64::try_from(engine.lease.as_millis()).unwrap_or(u64::MAX),
            poll_interval_ms: u64::try_from(engine.poll_interval.as_millis()).unwrap_or(u64::MAX),
            batch: engine.batch,
            per_tenant: engine.per_tenant,
            tenant_concurrency: engine.tenant_concurrency,
            retention_days: 30,
            workflows: Vec::new(),
        }
    }
}

/// Checks `[flow]`; `None` when workflows are off. Workflow files are read
/// and checked here, so a bad definition stops the start with its line.
pub(super) fn check_flow(raw: &RawFlow) -> anyhow::Result<Option<FlowSetup>> {
    if !raw.enabled {
        return Ok(None);
    }
    if raw.lease_ms < 1_000 {
        bail!(
            "key `flow.lease_ms`: must be at least 1000, got {}",
            raw.lease_ms
        );
    }
    if raw.poll_interval_ms == 0 {
        bail!("key `flow.poll_interval_ms`: must be at least 1");
    }
    if !(1..=1_000).contains(&raw.batch) {
        bail!("key `flow.batch`: must be 1 to 1000, got {}", raw.batch);
    }
    if raw.per_tenant == 0 {
        bail!("key `flow.per_tenant`: must be at least 1");
    }
    if raw.tenant_concurrency == Some(0) {
        bail!("key `flow.tenant_concurrency`: must be at least 1 (leave it out for no cap)");
    }
    if raw.retention_days == 0 {
        bail!("key `flow.retention_days`: must be at least 1");
    }
    let mut workflows = Vec::with_capacity(raw.workflows.len());
    for (i, workflow) in raw.workflows.iter().enumerate() {
        let tenant = TenantId::new(workflow.tenant.as_str())
            .with_context(|| format!("key `flow.workflows[{i}].tenant`"))?;
        let text = std::fs::read_to_string(&workflow.file).with_context(|| {
            format!(
                "key `flow.workflows[{i}].file`: cannot read {}",
                workflow.file
            )
        })?;
        keel_flow::parse(&text)
            .with_context(|| format!("key `flow.workflows[{i}].file`: {}", workflow.file))?;
        workflows.push((tenant, text));
    }
    Ok(Some(FlowSetup {
        engine: EngineConfig {
            lease: Duration::from_millis(raw.lease_ms),
            poll_interval: Duration::from_millis(raw.poll_interval_ms),
            batch: raw.batch,
            per_tenant: raw.per_tenant,
            tenant_concurrency: raw.tenant_concurrency,
            ..EngineConfig::default()
        },
        retention: Duration::from_secs(raw.retention_days * 24 * 3600),
        workflows,
    }))
}
