//! Tenants' SSH public keys.

use neocloud_types::{SshKey, SshKeyId, TenantId, Timestamp};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Result, Store, StoreError, WriteTx, id_col, is_unique_violation};

const COLS: &str = "id, tenant_id, name, public_key, fingerprint, created_at";

fn from_row(r: &AnyRow) -> Result<SshKey> {
    Ok(SshKey {
        id: id_col(r, "id")?,
        tenant_id: id_col(r, "tenant_id")?,
        name: r.try_get("name")?,
        public_key: r.try_get("public_key")?,
        fingerprint: r.try_get("fingerprint")?,
        created_at: Timestamp::from_micros(r.try_get("created_at")?),
    })
}

impl Store {
    /// Adds a key; a name the tenant already uses is a conflict.
    pub async fn ssh_key_insert(tx: &mut WriteTx, k: &SshKey) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO ssh_keys ({COLS}) VALUES ($1, $2, $3, $4, $5, $6)"
        ))
        .bind(k.id.to_string())
        .bind(k.tenant_id.to_string())
        .bind(&k.name)
        .bind(&k.public_key)
        .bind(&k.fingerprint)
        .bind(k.created_at.micros())
        .execute(tx.conn())
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("an SSH key named '{}' exists", k.name))
            } else {
                e.into()
            }
        })?;
        Ok(())
    }

    /// A tenant's keys, by name.
    pub async fn ssh_key_list(&self, tenant: Option<TenantId>) -> Result<Vec<SshKey>> {
        let rows = match tenant {
            Some(t) => {
                sqlx::query(&format!(
                    "SELECT {COLS} FROM ssh_keys WHERE tenant_id = $1 ORDER BY name, id"
                ))
                .bind(t.to_string())
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {COLS} FROM ssh_keys ORDER BY tenant_id, name, id"
                ))
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(from_row).collect()
    }

    /// One of a tenant's keys, by id or name.
    pub async fn ssh_key_get(&self, tenant: TenantId, id_or_name: &str) -> Result<SshKey> {
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM ssh_keys WHERE tenant_id = $1 AND (id = $2 OR name = $2)"
        ))
        .bind(tenant.to_string())
        .bind(id_or_name)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => from_row(&r),
            None => Err(StoreError::NotFound {
                kind: "SSH key",
                id: id_or_name.to_string(),
            }),
        }
    }

    /// Removes a key. Instances launched with it keep the public key they were given.
    pub async fn ssh_key_delete(tx: &mut WriteTx, id: SshKeyId) -> Result<()> {
        sqlx::query("DELETE FROM ssh_keys WHERE id = $1")
            .bind(id.to_string())
            .execute(tx.conn())
            .await?;
        Ok(())
    }
}
