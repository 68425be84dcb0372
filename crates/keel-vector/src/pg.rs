//! The PostgreSQL backend: collections in tables with a pgvector HNSW
//! index, for several keel processes sharing one database.
//!
//! The catalog `keel_vector_collections` maps `(tenant, name)` to a spec
//! and a table. Each collection's table holds `part` (the partition key's
//! value, `''` without one), `id`, `vector`, `payload` (as given) and
//! `fields` (the indexed values, normalized; see [`crate::sql`]). With a
//! partition key the table is list-partitioned, one partition (and so one
//! HNSW index) per value, created on first use.
//!
//! Queries run in a transaction that sets `hnsw.ef_search` and pgvector
//! 0.8's iterative scan, so a filtered index scan keeps looking until it
//! has `k` rows; PostgreSQL's planner picks between that and an exact scan
//! of the rows a selective filter keeps. A scan that still comes back
//! short is rerun with the index disabled, so a query returns `k` answers
//! whenever `k` points match, as the embedded store does.

use std::collections::HashMap;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};

use crate::collection::{CollectionInfo, check_partition, prepare, prepare_query};
use crate::error::{Result, VectorError};
use crate::filter::Filter;
use crate::payload::extract;
use crate::point::{Point, Query, QueryResult, ScoredPoint, Strategy};
use crate::spec::{CollectionSpec, Metric};
use crate::sql::{Bind, Sql, normalized, numeric};

/// The vector store in PostgreSQL with pgvector; cheap to clone.
#[derive(Debug, Clone)]
pub struct PgVectorStore {
    pool: PgPool,
}

/// Advisory lock key serialising setup across processes (the bytes of
/// "keelvect").
const SETUP_LOCK: i64 = 0x6b65_656c_7665_6374;

fn db(e: sqlx::Error) -> VectorError {
    VectorError::Database(e.to_string())
}

impl PgVectorStore {
    /// Connects, enables pgvector and creates the catalog.
    pub async fn connect(url: &str) -> Result<PgVectorStore> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .connect(url)
            .await
            .map_err(|e| VectorError::Database(format!("connecting to {}: {e}", redact(url))))?;
        // Processes starting together race to create the extension and the
        // catalog, and `IF NOT EXISTS` does not stop the loser from failing
        // on a unique index: one setup at a time, under an advisory lock.
        let mut tx = pool.begin().await.map_err(db)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SETUP_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::query("CREATE EXTENSION IF NOT EXISTS vector")
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                VectorError::Database(format!(
                    "enabling pgvector: {e}; install pgvector 0.8 or later in this server (scripts/pgvector.sh starts one)"
                ))
            })?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS keel_vector_collections (
                 tenant TEXT NOT NULL,
                 name TEXT NOT NULL,
                 spec JSONB NOT NULL,
                 table_name TEXT NOT NULL UNIQUE,
                 created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                 PRIMARY KEY (tenant, name))",
        )
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        tracing::info!(url = %redact(url), "Vector store on PostgreSQL");
        Ok(PgVectorStore { pool })
    }

    /// Creates a collection and its table and indexes.
    pub async fn create(&self, tenant: &str, mut spec: CollectionSpec) -> Result<CollectionInfo> {
        spec.validate()?;
        let table = table_name(tenant, &spec.name);
        let mut tx = self.pool.begin().await.map_err(db)?;
        let inserted = sqlx::query(
            "INSERT INTO keel_vector_collections (tenant, name, spec, table_name)
             VALUES ($1, $2, $3::jsonb, $4) ON CONFLICT DO NOTHING",
        )
        .bind(tenant)
        .bind(&spec.name)
        .bind(serde_json::to_string(&spec).unwrap_or_default())
        .bind(&table)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        if inserted.rows_affected() == 0 {
            return Err(VectorError::AlreadyExists { name: spec.name });
        }
        // Identifiers below are keel's own (a hash) or checked field names;
        // the numbers are checked integers. Nothing a client typed verbatim.
        let partitioned = if spec.partition_key.is_some() {
            " PARTITION BY LIST (part)"
        } else {
            ""
        };
        let ddl = [
            format!(
                "CREATE TABLE {table} (part TEXT NOT NULL, id TEXT NOT NULL, vector vector({dim}) NOT NULL,
                 payload JSONB NOT NULL, fields JSONB NOT NULL, PRIMARY KEY (part, id)){partitioned}",
                dim = spec.dimension
            ),
            format!(
                "CREATE INDEX {table}_hnsw ON {table} USING hnsw (vector {ops}) WITH (m = {m}, ef_construction = {ef})",
                ops = ops(spec.metric),
                m = spec.hnsw.m,
                ef = spec.hnsw.ef_construction
            ),
            format!("CREATE INDEX {table}_fields ON {table} USING gin (fields)"),
            format!("CREATE INDEX {table}_id ON {table} (id)"),
        ];
        for statement in ddl {
            sqlx::query(&statement)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        for (i, (field, ty)) in spec.fields.iter().enumerate() {
            if ty.is_ordered() {
                let statement =
                    format!("CREATE INDEX {table}_f{i} ON {table} ({})", numeric(field));
                sqlx::query(&statement)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
            }
        }
        tx.commit().await.map_err(db)?;
        Ok(CollectionInfo {
            spec,
            points: 0,
            partitions: 0,
        })
    }

    /// Every tenant (namespace) that has a collection, sorted.
    pub async fn tenants(&self) -> Result<Vec<String>> {
        let rows =
            sqlx::query("SELECT DISTINCT tenant FROM keel_vector_collections ORDER BY tenant")
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// A tenant's collections, by name.
    pub async fn list(&self, tenant: &str) -> Result<Vec<CollectionInfo>> {
        let rows =
            sqlx::query("SELECT name FROM keel_vector_collections WHERE tenant = $1 ORDER BY name")
                .bind(tenant)
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
        let mut out = Vec::new();
        for row in rows {
            let name: String = row.get(0);
            out.push(self.info(tenant, &name).await?);
        }
        Ok(out)
    }

    /// One collection.
    pub async fn info(&self, tenant: &str, name: &str) -> Result<CollectionInfo> {
        let (spec, table) = self.lookup(tenant, name).await?;
        let row = sqlx::query(&format!(
            "SELECT count(*), count(DISTINCT part) FROM {table}"
        ))
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        let points: i64 = row.get(0);
        let partitions: i64 = row.get(1);
        Ok(CollectionInfo {
            spec,
            points: points as u64,
            partitions: partitions as usize,
        })
    }

    /// A collection's spec.
    pub async fn spec(&self, tenant: &str, name: &str) -> Result<CollectionSpec> {
        Ok(self.lookup(tenant, name).await?.0)
    }

    /// Deletes a collection and its table.
    pub async fn delete_collection(&self, tenant: &str, name: &str) -> Result<()> {
        let (_, table) = self.lookup(tenant, name).await?;
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query("DELETE FROM keel_vector_collections WHERE tenant = $1 AND name = $2")
            .bind(tenant)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::query(&format!("DROP TABLE IF EXISTS {table} CASCADE"))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    /// Stores points, replacing those with the same ids (a point whose
    /// partition changed leaves its old one).
    pub async fn upsert(&self, tenant: &str, name: &str, points: Vec<Point>) -> Result<usize> {
        let (spec, table) = self.lookup(tenant, name).await?;
        let points = prepare(&spec, points)?;
        let n = points.len();
        let mut columns: [Vec<String>; 5] = Default::default();
        let mut parts = Vec::new();
        for p in &points {
            let part = spec
                .partition_key
                .as_ref()
                .and_then(|k| p.payload.get(k))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let fields = normalized(&extract(&spec.fields, &p.payload, "payload")?);
            columns[0].push(part.clone());
            columns[1].push(p.id.clone());
            columns[2].push(vector_text(&p.vector));
            columns[3].push(Value::Object(p.payload.clone()).to_string());
            columns[4].push(fields.to_string());
            parts.push(part);
        }
        if spec.partition_key.is_some() {
            parts.sort();
            parts.dedup();
            for part in &parts {
                self.ensure_partition(&table, part).await?;
            }
        }
        let mut tx = self.pool.begin().await.map_err(db)?;
        if spec.partition_key.is_some() {
            sqlx::query(&format!(
                "DELETE FROM {table} t USING unnest($1::text[], $2::text[]) AS x(part, id)
                 WHERE t.id = x.id AND t.part <> x.part"
            ))
            .bind(&columns[0])
            .bind(&columns[1])
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        sqlx::query(&format!(
            "INSERT INTO {table} (part, id, vector, payload, fields)
             SELECT part, id, v::vector, p::jsonb, f::jsonb
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS x(part, id, v, p, f)
             ON CONFLICT (part, id) DO UPDATE
             SET vector = EXCLUDED.vector, payload = EXCLUDED.payload, fields = EXCLUDED.fields"
        ))
        .bind(&columns[0])
        .bind(&columns[1])
        .bind(&columns[2])
        .bind(&columns[3])
        .bind(&columns[4])
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(n)
    }

    /// Points by id, in the order asked (missing ids skipped).
    pub async fn get(
        &self,
        tenant: &str,
        name: &str,
        ids: Vec<String>,
        with_vector: bool,
    ) -> Result<Vec<Point>> {
        let (_, table) = self.lookup(tenant, name).await?;
        let rows = sqlx::query(&format!(
            "SELECT id, payload, CASE WHEN $2 THEN vector::text ELSE NULL END FROM {table} WHERE id = ANY($1)"
        ))
        .bind(&ids)
        .bind(with_vector)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let mut found: HashMap<String, Point> = rows
            .into_iter()
            .map(|row| {
                let point = point_of(&row);
                (point.id.clone(), point)
            })
            .collect();
        Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
    }

    /// Deletes points by id; returns how many existed.
    pub async fn delete(&self, tenant: &str, name: &str, ids: Vec<String>) -> Result<usize> {
        let (_, table) = self.lookup(tenant, name).await?;
        let done = sqlx::query(&format!("DELETE FROM {table} WHERE id = ANY($1)"))
            .bind(&ids)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(done.rows_affected() as usize)
    }

    /// Deletes every point the filter keeps; returns how many there were.
    pub async fn delete_matching(&self, tenant: &str, name: &str, filter: &Value) -> Result<usize> {
        let (spec, table) = self.lookup(tenant, name).await?;
        let filter = parse(&spec, Some(filter))?.unwrap_or_default();
        let mut sql = Sql::new(1);
        let condition = sql.filter(&filter);
        let text = format!("DELETE FROM {table} WHERE {condition}");
        let done = bind_all(sqlx::query(&text), &sql.binds)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(done.rows_affected() as usize)
    }

    /// Counts points, optionally filtered and in one partition.
    pub async fn count(
        &self,
        tenant: &str,
        name: &str,
        filter: Option<&Value>,
        partition: Option<String>,
    ) -> Result<u64> {
        let (spec, table) = self.lookup(tenant, name).await?;
        if let Some(p) = &partition {
            check_partition(&spec, Some(p))?;
        }
        let filter = parse(&spec, filter)?;
        self.count_where(&table, filter.as_ref(), partition).await
    }

    async fn count_where(
        &self,
        table: &str,
        filter: Option<&Filter>,
        partition: Option<String>,
    ) -> Result<u64> {
        let mut sql = Sql::new(2);
        let condition = filter.map_or_else(|| "TRUE".to_owned(), |f| sql.filter(f));
        let text = format!(
            "SELECT count(*) FROM {table} WHERE ($1::text IS NULL OR part = $1) AND {condition}"
        );
        let row = bind_all(sqlx::query(&text).bind(partition), &sql.binds)
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        let n: i64 = row.get(0);
        Ok(n as u64)
    }

    /// Answers a query.
    pub async fn query(
        &self,
        tenant: &str,
        name: &str,
        filter: Option<&Value>,
        mut query: Query,
    ) -> Result<QueryResult> {
        let (spec, table) = self.lookup(tenant, name).await?;
        check_partition(&spec, query.partition.as_deref())?;
        prepare_query(&spec, &mut query.vector)?;
        let filter = parse(&spec, filter)?;
        let part = query.partition.clone().unwrap_or_default();

        let mut sql = Sql::new(4);
        let condition = filter
            .as_ref()
            .map_or_else(|| "TRUE".to_owned(), |f| sql.filter(f));
        let op = operator(spec.metric);
        let text = format!(
            "SELECT id, payload, CASE WHEN $3 THEN vector::text ELSE NULL END, vector {op} $1::vector AS d
             FROM {table} WHERE part = $2 AND {condition} ORDER BY vector {op} $1::vector LIMIT {k}",
            k = query.k
        );
        let vector = vector_text(&query.vector);
        let run = |exact: bool| {
            let (text, binds, vector, part) = (&text, &sql.binds, &vector, &part);
            let pool = &self.pool;
            let ef = spec.hnsw.ef_search.max(query.k);
            async move {
                let mut tx = pool.begin().await.map_err(db)?;
                settings(&mut tx, ef, exact).await?;
                let q = sqlx::query(text)
                    .bind(vector)
                    .bind(part)
                    .bind(query.with_vector);
                bind_all(q, binds).fetch_all(&mut *tx).await.map_err(db)
            }
        };
        let mut rows = run(false).await?;
        let mut candidates = rows.len() as u64;
        if rows.len() < query.k {
            // Short: either fewer points match, or the index scan gave up.
            let count = self
                .count_where(&table, filter.as_ref(), Some(part.clone()))
                .await?;
            candidates = count;
            if (rows.len() as u64) < count.min(query.k as u64) {
                rows = run(true).await?;
            }
        }
        let mut points: Vec<ScoredPoint> = rows
            .iter()
            .map(|row| {
                let p = point_of(row);
                let d: f64 = row.get(3);
                ScoredPoint {
                    id: p.id,
                    score: score(spec.metric, d),
                    payload: query.with_payload.then_some(p.payload),
                    vector: query.with_vector.then_some(p.vector),
                }
            })
            .collect();
        // An iterative scan may return rows slightly out of order.
        if spec.metric.higher_is_closer() {
            points.sort_by(|a, b| b.score.total_cmp(&a.score));
        } else {
            points.sort_by(|a, b| a.score.total_cmp(&b.score));
        }
        let strategy = if points.is_empty() {
            Strategy::Empty
        } else {
            Strategy::Database
        };
        Ok(QueryResult {
            points,
            strategy,
            candidates,
        })
    }

    async fn lookup(&self, tenant: &str, name: &str) -> Result<(CollectionSpec, String)> {
        let row = sqlx::query("SELECT spec::text, table_name FROM keel_vector_collections WHERE tenant = $1 AND name = $2")
            .bind(tenant)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?
            .ok_or_else(|| VectorError::NotFound { name: name.to_owned() })?;
        let spec: String = row.get(0);
        let spec = serde_json::from_str(&spec).map_err(|e| VectorError::Corrupt {
            path: format!("keel_vector_collections({tenant}, {name})"),
            message: e.to_string(),
        })?;
        Ok((spec, row.get(1)))
    }

    async fn ensure_partition(&self, table: &str, part: &str) -> Result<()> {
        let child = format!("{table}_p{}", &hex(&Sha256::digest(part.as_bytes()))[..16]);
        // PostgreSQL quotes the value itself (%L), so any string is safe.
        let row = sqlx::query("SELECT format('CREATE TABLE IF NOT EXISTS %I PARTITION OF %I FOR VALUES IN (%L)', $1::text, $2::text, $3::text)")
            .bind(&child)
            .bind(table)
            .bind(part)
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        let statement: String = row.get(0);
        match sqlx::query(&statement).execute(&self.pool).await {
            Ok(_) => Ok(()),
            // Another process created it between our check and ours.
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P07" | "23505")) =>
            {
                Ok(())
            }
            Err(e) => Err(db(e)),
        }
    }
}

async fn settings(tx: &mut Transaction<'_, Postgres>, ef: usize, exact: bool) -> Result<()> {
    sqlx::query("SELECT set_config('hnsw.ef_search', $1, true), set_config('hnsw.iterative_scan', 'relaxed_order', true)")
        .bind(ef.min(1000).to_string())
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    if exact {
        sqlx::query("SELECT set_config('enable_indexscan', 'off', true)")
            .execute(&mut **tx)
            .await
            .map_err(db)?;
    }
    Ok(())
}

fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    binds: &'q [Bind],
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    for b in binds {
        q = match b {
            Bind::Text(t) => q.bind(t),
            Bind::Num(n) => q.bind(n),
        };
    }
    q
}

fn parse(spec: &CollectionSpec, filter: Option<&Value>) -> Result<Option<Filter>> {
    filter
        .filter(|f| !f.is_null())
        .map(|f| Filter::parse(f, &spec.fields, "filter"))
        .transpose()
}

fn point_of(row: &PgRow) -> Point {
    let payload: Value = row.get(1);
    let vector: Option<String> = row.get(2);
    Point {
        id: row.get(0),
        vector: vector.map(|v| parse_vector(&v)).unwrap_or_default(),
        payload: match payload {
            Value::Object(m) => m,
            _ => Map::new(),
        },
    }
}

fn ops(metric: Metric) -> &'static str {
    match metric {
        Metric::Cosine | Metric::Dot => "vector_ip_ops",
        Metric::L2 => "vector_l2_ops",
    }
}

fn operator(metric: Metric) -> &'static str {
    match metric {
        Metric::Cosine | Metric::Dot => "<#>",
        Metric::L2 => "<->",
    }
}

/// `<#>` is the negated inner product; `<->` the euclidean distance.
fn score(metric: Metric, d: f64) -> f32 {
    match metric {
        Metric::Cosine | Metric::Dot => (-d) as f32,
        Metric::L2 => d as f32,
    }
}

fn vector_text(v: &[f32]) -> String {
    let items: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    format!("[{}]", items.join(","))
}

fn parse_vector(text: &str) -> Vec<f32> {
    text.trim_matches(['[', ']'])
        .split(',')
        .filter_map(|x| x.trim().parse().ok())
        .collect()
}

fn table_name(tenant: &str, name: &str) -> String {
    let digest = Sha256::digest(format!("{tenant}\u{0}{name}").as_bytes());
    format!("keel_vec_{}", &hex(&digest)[..20])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_round_trip_through_text() {
        let v = vec![0.1f32, -2.5, 3e-8];
        assert_eq!(parse_vector(&vector_text(&v)), v);
    }

    #[test]
    fn table_names_are_per_tenant() {
        assert_ne!(table_name("a", "docs"), table_name("b", "docs"));
        assert_eq!(table_name("a", "docs").len(), "keel_vec_".len() + 20);
    }
}
