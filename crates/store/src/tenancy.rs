//! Tenants, API keys, the audit trail and idempotency records.

use neocloud_types::{
    ApiKey, ApiKeyId, Event, EventId, Money, Role, Tenant, TenantId, TenantKind, TenantStatus,
    Timestamp,
};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{
    Page, Result, Store, StoreError, WriteTx, enum_col, id_col, is_unique_violation, opt_id_col,
};

const TENANT_COLS: &str =
    "id, name, display_name, kind, status, credit_limit_micros, created_at, updated_at";

fn tenant_from_row(r: &AnyRow) -> Result<Tenant> {
    Ok(Tenant {
        id: id_col(r, "id")?,
        name: r.try_get("name")?,
        display_name: r.try_get("display_name")?,
        kind: enum_col(r, "kind")?,
        status: enum_col(r, "status")?,
        credit_limit: r
            .try_get::<Option<i64>, _>("credit_limit_micros")?
            .map(Money::from_micros),
        created_at: Timestamp::from_micros(r.try_get("created_at")?),
        updated_at: Timestamp::from_micros(r.try_get("updated_at")?),
    })
}

const KEY_COLS: &str =
    "id, name, role, tenant_id, prefix, created_at, expires_at, revoked_at, last_used_at, node_id";

fn key_from_row(r: &AnyRow) -> Result<ApiKey> {
    let ts = |c: &str| -> Result<Option<Timestamp>> {
        Ok(r.try_get::<Option<i64>, _>(c)?.map(Timestamp::from_micros))
    };
    Ok(ApiKey {
        id: id_col(r, "id")?,
        name: r.try_get("name")?,
        role: enum_col::<Role>(r, "role")?,
        tenant_id: opt_id_col(r, "tenant_id")?,
        prefix: r.try_get("prefix")?,
        created_at: Timestamp::from_micros(r.try_get("created_at")?),
        expires_at: ts("expires_at")?,
        revoked_at: ts("revoked_at")?,
        last_used_at: ts("last_used_at")?,
        node_id: opt_id_col(r, "node_id")?,
    })
}

/// A new audit event.
#[derive(Clone, Debug)]
pub struct NewEvent<'a> {
    /// The key that acted; none for the system itself.
    pub actor: Option<ApiKeyId>,
    /// The tenant the change belongs to.
    pub tenant_id: Option<TenantId>,
    /// What happened, e.g. `tenant.created`.
    pub action: &'a str,
    /// Kind of resource, e.g. `tenant`.
    pub resource_kind: &'a str,
    /// Id or name of the resource.
    pub resource_id: String,
    /// The resource before the change.
    pub before: Option<serde_json::Value>,
    /// The resource after the change.
    pub after: Option<serde_json::Value>,
}

/// Filters for listing events.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    /// Only events of this tenant.
    pub tenant_id: Option<TenantId>,
    /// Only events about this resource id or name.
    pub resource_id: Option<String>,
    /// Only events whose action starts with this (e.g. `tenant.`).
    pub action_prefix: Option<String>,
}

/// A stored response to a create made with an Idempotency-Key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// Hash of the request that made it (method, path, body).
    pub fingerprint: String,
    /// HTTP status of the first response.
    pub status: u16,
    /// Body of the first response.
    pub body: String,
}

/// Changes to a tenant; fields left `None` stay as they are.
#[derive(Clone, Debug, Default)]
pub struct TenantChanges {
    /// New display name.
    pub display_name: Option<String>,
    /// New status.
    pub status: Option<TenantStatus>,
    /// New credit limit: `Some(None)` removes the limit.
    pub credit_limit: Option<Option<Money>>,
}

impl Store {
    /// Inserts a tenant.
    pub async fn tenant_create(
        tx: &mut WriteTx,
        name: &str,
        display_name: &str,
        kind: TenantKind,
        credit_limit: Option<Money>,
    ) -> Result<Tenant> {
        let now = tx.now();
        let t = Tenant {
            id: TenantId::new(),
            name: name.to_string(),
            display_name: display_name.to_string(),
            kind,
            status: TenantStatus::Active,
            credit_limit,
            created_at: now,
            updated_at: now,
        };
        sqlx::query(&format!(
            "INSERT INTO tenants ({TENANT_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(t.id.to_string())
        .bind(&t.name)
        .bind(&t.display_name)
        .bind(t.kind.as_str())
        .bind(t.status.as_str())
        .bind(t.credit_limit.map(|m| m.micros()))
        .bind(now.micros())
        .bind(now.micros())
        .execute(tx.conn())
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("a tenant named '{name}' already exists"))
            } else {
                e.into()
            }
        })?;
        Ok(t)
    }

    /// Reads a tenant by id or name.
    pub async fn tenant_get(&self, id_or_name: &str) -> Result<Tenant> {
        let row = sqlx::query(&format!(
            "SELECT {TENANT_COLS} FROM tenants WHERE id = $1 OR name = $1"
        ))
        .bind(id_or_name)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => tenant_from_row(&r),
            None => Err(StoreError::NotFound {
                kind: "tenant",
                id: id_or_name.to_string(),
            }),
        }
    }

    /// Lists tenants by name, a page at a time.
    pub async fn tenant_list(
        &self,
        only: Option<TenantId>,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Tenant>> {
        let rows = sqlx::query(&format!(
            "SELECT {TENANT_COLS} FROM tenants
             WHERE ($1 = '' OR id = $1) AND name > $2 ORDER BY name LIMIT $3"
        ))
        .bind(only.map(|t| t.to_string()).unwrap_or_default())
        .bind(cursor.unwrap_or(""))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let mut items = rows
            .iter()
            .map(tenant_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(paginate(&mut items, limit, |t| t.name.clone()))
    }

    /// Applies changes to a tenant and returns it before and after.
    pub async fn tenant_update(
        tx: &mut WriteTx,
        id: TenantId,
        changes: &TenantChanges,
    ) -> Result<(Tenant, Tenant)> {
        let row = sqlx::query(&format!("SELECT {TENANT_COLS} FROM tenants WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(tx.conn())
            .await?;
        let before = match row {
            Some(r) => tenant_from_row(&r)?,
            None => {
                return Err(StoreError::NotFound {
                    kind: "tenant",
                    id: id.to_string(),
                });
            }
        };
        let mut after = before.clone();
        if let Some(d) = &changes.display_name {
            after.display_name = d.clone();
        }
        if let Some(s) = changes.status {
            after.status = s;
        }
        if let Some(c) = changes.credit_limit {
            after.credit_limit = c;
        }
        after.updated_at = tx.now();
        sqlx::query(
            "UPDATE tenants SET display_name = $1, status = $2, credit_limit_micros = $3,
             updated_at = $4 WHERE id = $5",
        )
        .bind(&after.display_name)
        .bind(after.status.as_str())
        .bind(after.credit_limit.map(|m| m.micros()))
        .bind(after.updated_at.micros())
        .bind(id.to_string())
        .execute(tx.conn())
        .await?;
        Ok((before, after))
    }

    /// Inserts an API key with the hash of its secret.
    pub async fn api_key_create(tx: &mut WriteTx, key: &ApiKey, secret_hash: &str) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO api_keys ({KEY_COLS}, secret_hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
        .bind(key.id.to_string())
        .bind(&key.name)
        .bind(key.role.as_str())
        .bind(key.tenant_id.map(|t| t.to_string()))
        .bind(&key.prefix)
        .bind(key.created_at.micros())
        .bind(key.expires_at.map(|t| t.micros()))
        .bind(key.revoked_at.map(|t| t.micros()))
        .bind(key.last_used_at.map(|t| t.micros()))
        .bind(key.node_id.map(|n| n.to_string()))
        .bind(secret_hash)
        .execute(tx.conn())
        .await?;
        Ok(())
    }

    /// Finds a key by its visible prefix, with the stored hash of its secret.
    pub async fn api_key_by_prefix(&self, prefix: &str) -> Result<Option<(ApiKey, String)>> {
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLS}, secret_hash FROM api_keys WHERE prefix = $1"
        ))
        .bind(prefix)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => Ok(Some((key_from_row(&r)?, r.try_get("secret_hash")?))),
            None => Ok(None),
        }
    }

    /// Reads a key by id.
    pub async fn api_key_get(&self, id: ApiKeyId) -> Result<ApiKey> {
        let row = sqlx::query(&format!("SELECT {KEY_COLS} FROM api_keys WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => key_from_row(&r),
            None => Err(StoreError::NotFound {
                kind: "API key",
                id: id.to_string(),
            }),
        }
    }

    /// Lists keys (of one tenant, or all), newest first.
    pub async fn api_key_list(
        &self,
        tenant: Option<TenantId>,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<ApiKey>> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLS} FROM api_keys
             WHERE ($1 = '' OR tenant_id = $1) AND ($2 = '' OR id < $2)
             ORDER BY id DESC LIMIT $3"
        ))
        .bind(tenant.map(|t| t.to_string()).unwrap_or_default())
        .bind(cursor.unwrap_or(""))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let mut items = rows.iter().map(key_from_row).collect::<Result<Vec<_>>>()?;
        Ok(paginate(&mut items, limit, |k| k.id.to_string()))
    }

    /// Revokes a key; revoking twice keeps the first revocation time.
    pub async fn api_key_revoke(tx: &mut WriteTx, id: ApiKeyId) -> Result<(ApiKey, ApiKey)> {
        let row = sqlx::query(&format!("SELECT {KEY_COLS} FROM api_keys WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(tx.conn())
            .await?;
        let before = match row {
            Some(r) => key_from_row(&r)?,
            None => {
                return Err(StoreError::NotFound {
                    kind: "API key",
                    id: id.to_string(),
                });
            }
        };
        let mut after = before.clone();
        if after.revoked_at.is_none() {
            let now = tx.now();
            after.revoked_at = Some(now);
            sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2")
                .bind(now.micros())
                .bind(id.to_string())
                .execute(tx.conn())
                .await?;
        }
        Ok((before, after))
    }

    /// Records that a key was used, inside a batch.
    pub async fn api_key_touch_tx(tx: &mut WriteTx, id: ApiKeyId, at: Timestamp) -> Result<()> {
        sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $1)")
            .bind(at.micros())
            .bind(id.to_string())
            .execute(tx.conn())
            .await?;
        Ok(())
    }

    /// Whether any key exists (first start creates the operator key when none does).
    pub async fn api_key_any(&self) -> Result<bool> {
        let row = sqlx::query("SELECT COUNT(*) FROM api_keys")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>(0)? > 0)
    }

    /// Appends an audit event inside the transaction that makes the change.
    pub async fn event_insert(tx: &mut WriteTx, e: NewEvent<'_>) -> Result<EventId> {
        let id = EventId::new();
        let json = |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string());
        let at = tx.now().micros();
        if let Some(d) = tx.deferred.as_mut() {
            d.events.push(EventRow {
                id: id.to_string(),
                at,
                actor: e.actor.map(|a| a.to_string()),
                tenant: e.tenant_id.map(|t| t.to_string()),
                action: e.action.to_string(),
                kind: e.resource_kind.to_string(),
                resource: e.resource_id,
                before: json(&e.before),
                after: json(&e.after),
            });
            return Ok(id);
        }
        let seq = Self::event_seq_next(tx).await?;
        sqlx::query(
            "INSERT INTO events (id, at, actor_key_id, tenant_id, action, resource_kind,
             resource_id, before_json, after_json, seq)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(id.to_string())
        .bind(at)
        .bind(e.actor.map(|a| a.to_string()))
        .bind(e.tenant_id.map(|t| t.to_string()))
        .bind(e.action)
        .bind(e.resource_kind)
        .bind(&e.resource_id)
        .bind(json(&e.before))
        .bind(json(&e.after))
        .bind(seq)
        .execute(tx.conn())
        .await?;
        Ok(id)
    }

    /// The sequence number of the next event written in this transaction. Events are
    /// numbered in the order they commit: a transaction that writes events holds the
    /// process's write lock from its start, SQLite has one writer at a time, and on
    /// PostgreSQL only the lease holder's commits go through, so the numbers of a
    /// transaction follow those of every transaction committed before it. Webhooks read
    /// events in this order.
    pub(crate) async fn event_seq_next(tx: &mut WriteTx) -> Result<i64> {
        let next = Self::event_seq_last(tx).await? + 1;
        tx.event_seq = Some(next);
        Ok(next)
    }

    /// The sequence number of the last event written, in this transaction or before it
    /// (0 when none has one).
    pub async fn event_seq_last(tx: &mut WriteTx) -> Result<i64> {
        if let Some(s) = tx.event_seq {
            return Ok(s);
        }
        let row = sqlx::query("SELECT CAST(COALESCE(MAX(seq), 0) AS BIGINT) FROM events")
            .fetch_one(tx.conn())
            .await?;
        let last: i64 = row.try_get(0)?;
        tx.event_seq = Some(last);
        Ok(last)
    }

    /// Lists events, newest first.
    pub async fn event_list(
        &self,
        filter: &EventFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Event>> {
        let rows = sqlx::query(
            "SELECT id, at, actor_key_id, tenant_id, action, resource_kind, resource_id,
                    before_json, after_json
             FROM events
             WHERE ($1 = '' OR tenant_id = $1) AND ($2 = '' OR resource_id = $2)
               AND ($3 = '' OR action LIKE $4 ESCAPE '!') AND ($5 = '' OR id < $5)
             ORDER BY id DESC LIMIT $6",
        )
        .bind(filter.tenant_id.map(|t| t.to_string()).unwrap_or_default())
        .bind(filter.resource_id.clone().unwrap_or_default())
        .bind(filter.action_prefix.clone().unwrap_or_default())
        .bind(format!(
            "{}%",
            filter
                .action_prefix
                .as_deref()
                .unwrap_or("")
                .replace('!', "!!")
                .replace('%', "!%")
                .replace('_', "!_")
        ))
        .bind(cursor.unwrap_or(""))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let json = |r: &AnyRow, c: &str| -> Result<Option<serde_json::Value>> {
            let s: Option<String> = r.try_get(c)?;
            s.map(|s| serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(e.to_string())))
                .transpose()
        };
        let mut items = rows
            .iter()
            .map(|r| {
                Ok(Event {
                    id: id_col(r, "id")?,
                    at: Timestamp::from_micros(r.try_get("at")?),
                    actor_key_id: opt_id_col(r, "actor_key_id")?,
                    tenant_id: opt_id_col(r, "tenant_id")?,
                    action: r.try_get("action")?,
                    resource_kind: r.try_get("resource_kind")?,
                    resource_id: r.try_get("resource_id")?,
                    before: json(r, "before_json")?,
                    after: json(r, "after_json")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(paginate(&mut items, limit, |e| e.id.to_string()))
    }

    /// Reads the stored response for an Idempotency-Key, inside the create's transaction.
    pub async fn idempotency_get(
        tx: &mut WriteTx,
        scope: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>> {
        let row = sqlx::query(
            "SELECT fingerprint, status, body FROM idempotency_keys WHERE scope = $1 AND idem_key = $2",
        )
        .bind(scope)
        .bind(key)
        .fetch_optional(tx.conn())
        .await?;
        match row {
            Some(r) => idempotency_from_row(&r).map(Some),
            None => Ok(None),
        }
    }

    /// Reads the stored response for an Idempotency-Key outside any transaction.
    pub async fn idempotency_find(
        &self,
        scope: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>> {
        let row = sqlx::query(
            "SELECT fingerprint, status, body FROM idempotency_keys WHERE scope = $1 AND idem_key = $2",
        )
        .bind(scope)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => idempotency_from_row(&r).map(Some),
            None => Ok(None),
        }
    }

    /// Stores the response to a create made with an Idempotency-Key, in the create's
    /// transaction. A concurrent create with the same key makes this a `Conflict`.
    pub async fn idempotency_put(
        tx: &mut WriteTx,
        scope: &str,
        key: &str,
        rec: &IdempotencyRecord,
    ) -> Result<()> {
        let at = tx.now().micros();
        if let Some(d) = tx.deferred.as_mut() {
            d.idem
                .push((scope.to_string(), key.to_string(), rec.clone(), at));
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO idempotency_keys (scope, idem_key, fingerprint, status, body, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(scope)
        .bind(key)
        .bind(&rec.fingerprint)
        .bind(i64::from(rec.status))
        .bind(&rec.body)
        .bind(at)
        .execute(tx.conn())
        .await
        .map_err(|e| idem_conflict(e, key))?;
        Ok(())
    }

    /// Replaces the stored body of an Idempotency-Key with the answer the first request
    /// finally gave (a create that re-reads its resource after commit records it in the
    /// create's transaction first, then settles it here).
    pub async fn idempotency_settle(
        tx: &mut WriteTx,
        scope: &str,
        key: &str,
        rec: &IdempotencyRecord,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE idempotency_keys SET body = $1, status = $2
             WHERE scope = $3 AND idem_key = $4 AND fingerprint = $5",
        )
        .bind(&rec.body)
        .bind(i64::from(rec.status))
        .bind(scope)
        .bind(key)
        .bind(&rec.fingerprint)
        .execute(tx.conn())
        .await?;
        Ok(())
    }
}

fn idempotency_from_row(r: &AnyRow) -> Result<IdempotencyRecord> {
    Ok(IdempotencyRecord {
        fingerprint: r.try_get("fingerprint")?,
        status: u16::try_from(r.try_get::<i64, _>("status")?)
            .map_err(|_| StoreError::Corrupt("idempotency status".into()))?,
        body: r.try_get("body")?,
    })
}

/// Trims a fetched `limit + 1` rows to `limit` and derives the next cursor.
pub(crate) fn paginate<T>(items: &mut Vec<T>, limit: u32, key: impl Fn(&T) -> String) -> Page<T> {
    let limit = limit as usize;
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(key)
    } else {
        None
    };
    Page {
        items: std::mem::take(items),
        next_cursor,
    }
}

fn idem_conflict(e: sqlx::Error, key: &str) -> StoreError {
    if is_unique_violation(&e) {
        StoreError::Conflict(format!(
            "another request with Idempotency-Key '{key}' is in progress; retry it"
        ))
    } else {
        e.into()
    }
}

/// An audit event held back until its transaction commits.
pub(crate) struct EventRow {
    id: String,
    at: i64,
    actor: Option<String>,
    tenant: Option<String>,
    action: String,
    kind: String,
    resource: String,
    before: Option<String>,
    after: Option<String>,
}

/// Rows held back until the commit (see [`WriteTx::defer_inserts`]).
#[derive(Default)]
pub(crate) struct Deferred {
    /// New instance rows.
    pub(crate) instances: Vec<crate::instances::NewInstanceRow>,
    /// Whole GPUs to hold: (holder, node, first index, last index).
    pub(crate) holds: Vec<(String, String, u32, u32)>,
    /// Holders of `holds` that are gangs: each of their ranges is a whole node.
    pub(crate) gangs: std::collections::HashSet<String>,
    events: Vec<EventRow>,
    /// (scope, key, record, created_at).
    idem: Vec<(String, String, IdempotencyRecord, i64)>,
}

/// `($1, …, $n), ($n+1, …)` (or `(?, …), (?, …)` when not `numbered`): placeholders for
/// `rows` rows of `cols` values.
pub(crate) fn placeholders(rows: usize, cols: usize, numbered: bool) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(rows * cols * 6);
    for r in 0..rows {
        out.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..cols {
            let sep = if c == 0 { "" } else { ", " };
            if numbered {
                let _ = write!(out, "{sep}${}", r * cols + c + 1);
            } else {
                let _ = write!(out, "{sep}?");
            }
        }
        out.push(')');
    }
    out
}

/// Rows per multi-row statement: far below both databases' limits on bound values, and
/// small enough that binding stays cheap (SQLite finds a numbered parameter's name by a
/// linear search, so binding a statement costs the square of its parameters).
pub(crate) const ROWS_PER_STATEMENT: usize = 64;

impl Deferred {
    /// Writes the rows held back, one multi-row statement per kind (and per 64 rows).
    pub(crate) async fn flush(self, tx: &mut WriteTx) -> Result<()> {
        Store::instance_insert_rows(tx, &self.instances).await?;
        Store::instance_hold_ranges(tx, &self.holds, &self.gangs).await?;
        for chunk in self.events.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO events (id, at, actor_key_id, tenant_id, action, resource_kind,
                 resource_id, before_json, after_json, seq) VALUES {}",
                placeholders(chunk.len(), 10, tx.numbered)
            );
            let mut seqs = Vec::with_capacity(chunk.len());
            for _ in chunk {
                seqs.push(Store::event_seq_next(tx).await?);
            }
            let mut q = sqlx::query(&sql);
            for (e, seq) in chunk.iter().zip(seqs) {
                q = q
                    .bind(&e.id)
                    .bind(e.at)
                    .bind(&e.actor)
                    .bind(&e.tenant)
                    .bind(&e.action)
                    .bind(&e.kind)
                    .bind(&e.resource)
                    .bind(&e.before)
                    .bind(&e.after)
                    .bind(seq);
            }
            q.execute(tx.conn()).await?;
        }
        for chunk in self.idem.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO idempotency_keys (scope, idem_key, fingerprint, status, body,
                 created_at) VALUES {}",
                placeholders(chunk.len(), 6, tx.numbered)
            );
            let mut q = sqlx::query(&sql);
            for (scope, key, rec, at) in chunk {
                q = q
                    .bind(scope)
                    .bind(key)
                    .bind(&rec.fingerprint)
                    .bind(i64::from(rec.status))
                    .bind(&rec.body)
                    .bind(*at);
            }
            q.execute(tx.conn()).await.map_err(|e| {
                let keys: Vec<&str> = chunk.iter().map(|(_, k, _, _)| k.as_str()).collect();
                idem_conflict(e, &keys.join("', '"))
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod deferred_tests {
    use super::placeholders;

    #[test]
    fn placeholders_number_every_value_once() {
        assert_eq!(placeholders(1, 2, true), "($1, $2)");
        assert_eq!(placeholders(2, 3, true), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(placeholders(2, 2, false), "(?, ?), (?, ?)");
    }
}
