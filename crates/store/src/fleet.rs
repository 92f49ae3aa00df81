//! The fleet: GPU model catalog, sites, blocks, nodes, GPUs, and fleet-file import.

use std::collections::{BTreeMap, HashMap, HashSet};

use neocloud_fleet::{FleetSpec, NodeSpec, SiteSpec};
use neocloud_types::{
    Block, BlockId, BlockKind, BoardTopology, Gpu, GpuHealth, GpuModel, ImportReport, ModelCount,
    Money, Node, NodeId, NodeState, Site, SiteId, SiteKind, Timestamp,
};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::tenancy::paginate;
use crate::{
    NewEvent, Page, Result, Store, StoreError, WriteTx, enum_col, id_col, is_unique_violation,
    opt_id_col, u32_col,
};

/// Filters for listing nodes; all optional, combined with AND.
#[derive(Clone, Debug, Default)]
pub struct NodeFilter {
    /// Only nodes in this site (id or name).
    pub site: Option<String>,
    /// Only nodes inside this block (id, name or path), nested blocks included. Needs `site`
    /// unless an id is given.
    pub block: Option<String>,
    /// Only nodes in this state.
    pub state: Option<NodeState>,
    /// Only nodes with this GPU model.
    pub gpu_model: Option<String>,
}

const GPU_MODEL_COLS: &str = "name, vendor, memory_gib, tdp_watts, builtin, topology";

fn gpu_model_from_row(r: &AnyRow) -> Result<GpuModel> {
    let name: String = r.try_get("name")?;
    let topology = match r.try_get::<Option<String>, _>("topology")? {
        Some(t) => t
            .parse::<BoardTopology>()
            .map_err(|e| StoreError::Corrupt(format!("GPU model '{name}': {e}")))?,
        None => BoardTopology::of_model(&name),
    };
    Ok(GpuModel {
        vendor: r.try_get("vendor")?,
        memory_gib: u32_col(r, "memory_gib")?,
        tdp_watts: u32_col(r, "tdp_watts")?,
        builtin: r.try_get::<i64, _>("builtin")? != 0,
        topology,
        name,
    })
}

/// The topology column of a model: NULL when it is the rule for the model's name, so that
/// such a model follows the rule.
fn topology_col(name: &str, topology: BoardTopology) -> Option<String> {
    (topology != BoardTopology::of_model(name)).then(|| topology.to_string())
}

const NODE_COLS: &str = "n.id, n.name, n.site_id, s.name AS site_name, n.block_id, n.block_path, \
     n.gpu_model, n.gpu_count, n.cpu_cores, n.ram_gib, n.idle_watts, n.peak_watts, n.state, \
     n.state_reason, n.last_heartbeat_at, n.created_at, n.updated_at";

fn node_from_row(r: &AnyRow) -> Result<Node> {
    Ok(Node {
        id: id_col(r, "id")?,
        name: r.try_get("name")?,
        site_id: id_col(r, "site_id")?,
        site: r.try_get("site_name")?,
        block_id: opt_id_col(r, "block_id")?,
        block_path: r.try_get("block_path")?,
        gpu_model: r.try_get("gpu_model")?,
        gpu_count: u32_col(r, "gpu_count")?,
        cpu_cores: u32_col(r, "cpu_cores")?,
        ram_gib: u32_col(r, "ram_gib")?,
        idle_watts: u32_col(r, "idle_watts")?,
        peak_watts: u32_col(r, "peak_watts")?,
        state: enum_col(r, "state")?,
        state_reason: r.try_get("state_reason")?,
        last_heartbeat_at: r
            .try_get::<Option<i64>, _>("last_heartbeat_at")?
            .map(Timestamp::from_micros),
        created_at: Timestamp::from_micros(r.try_get("created_at")?),
        updated_at: Timestamp::from_micros(r.try_get("updated_at")?),
        gpus: None,
    })
}

/// A value for a bulk insert.
enum Val {
    S(String),
    OS(Option<String>),
    I(i64),
}

/// Bound parameters per bulk statement. Small enough that SQLite binds quickly (its cost per
/// statement grows faster than linearly with the parameter count through the driver), large
/// enough to amortise round trips on PostgreSQL; identical chunks reuse one prepared statement.
const BULK_PARAMS: usize = 1_000;

/// Inserts rows in multi-row statements, numbering `$n` placeholders by hand so the same
/// text runs on both backends. Chunks stay under SQLite's limit of bound variables.
async fn bulk_insert(
    conn: &mut AnyConnection,
    table: &str,
    cols: &[&str],
    rows: Vec<Vec<Val>>,
) -> Result<()> {
    let started = std::time::Instant::now();
    let per_stmt = (BULK_PARAMS / cols.len()).max(1);
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<Vec<Val>> = rows.by_ref().take(per_stmt).collect();
        let mut sql = format!("INSERT INTO {table} ({}) VALUES ", cols.join(", "));
        let mut n = 0;
        for (i, _) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for c in 0..cols.len() {
                n += 1;
                if c > 0 {
                    sql.push_str(", ");
                }
                sql.push('$');
                sql.push_str(&n.to_string());
            }
            sql.push(')');
        }
        let mut q = sqlx::query(&sql);
        for row in chunk {
            for v in row {
                q = match v {
                    Val::S(s) => q.bind(s),
                    Val::OS(s) => q.bind(s),
                    Val::I(i) => q.bind(i),
                };
            }
        }
        q.execute(&mut *conn).await?;
    }
    tracing::debug!(
        table,
        elapsed_ms = started.elapsed().as_millis(),
        "bulk insert"
    );
    Ok(())
}

/// What the store knows of a node when diffing an import.
struct ExistingNode {
    id: String,
    site_id: String,
    block_id: Option<String>,
    block_path: String,
    gpu_model: String,
    gpu_count: i64,
    cpu_cores: i64,
    ram_gib: i64,
    idle_watts: i64,
    peak_watts: i64,
}

struct ExistingBlock {
    id: String,
    kind: String,
    parent_id: Option<String>,
    path: String,
}

impl Store {
    /// Lists the GPU model catalog by name.
    pub async fn gpu_model_list(&self) -> Result<Vec<GpuModel>> {
        let rows = sqlx::query(&format!(
            "SELECT {GPU_MODEL_COLS} FROM gpu_models ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(gpu_model_from_row).collect()
    }

    /// The board topology of every model that has one of its own (see
    /// [`BoardTopology`]); a model not listed takes the rule for its name. Read in the
    /// store's view (see [`Store::read_view`]) when it has one.
    pub async fn gpu_model_topologies(&self) -> Result<BTreeMap<String, BoardTopology>> {
        let q = sqlx::query("SELECT name, topology FROM gpu_models WHERE topology IS NOT NULL");
        let rows = self.fetch_all_viewed(q).await?;
        rows.iter()
            .map(|r| {
                let name: String = r.try_get("name")?;
                let text: String = r.try_get("topology")?;
                let t = text
                    .parse::<BoardTopology>()
                    .map_err(|e| StoreError::Corrupt(format!("GPU model '{name}': {e}")))?;
                Ok((name, t))
            })
            .collect()
    }

    /// Reads one GPU model.
    pub async fn gpu_model_get(&self, name: &str) -> Result<GpuModel> {
        let row = sqlx::query(&format!(
            "SELECT {GPU_MODEL_COLS} FROM gpu_models WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => gpu_model_from_row(&r),
            None => Err(StoreError::NotFound {
                kind: "GPU model",
                id: name.to_string(),
            }),
        }
    }

    /// Adds a GPU model to the catalog.
    pub async fn gpu_model_create(tx: &mut WriteTx, m: &GpuModel) -> Result<()> {
        sqlx::query(
            "INSERT INTO gpu_models (name, vendor, memory_gib, tdp_watts, builtin, created_at,
                                     topology)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&m.name)
        .bind(&m.vendor)
        .bind(i64::from(m.memory_gib))
        .bind(i64::from(m.tdp_watts))
        .bind(i64::from(m.builtin))
        .bind(tx.now().micros())
        .bind(topology_col(&m.name, m.topology))
        .execute(tx.conn())
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("GPU model '{}' already exists", m.name))
            } else {
                e.into()
            }
        })?;
        Ok(())
    }

    /// Makes sure the built-in catalog is present (run at every start; adds new built-ins).
    pub async fn gpu_model_seed_builtins(&self) -> Result<()> {
        let existing: HashSet<String> = self
            .gpu_model_list()
            .await?
            .into_iter()
            .map(|m| m.name)
            .collect();
        let missing: Vec<GpuModel> = neocloud_types::builtin_gpu_models()
            .into_iter()
            .filter(|m| !existing.contains(&m.name))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for m in &missing {
            Self::gpu_model_create(&mut tx, m).await?;
        }
        tx.commit().await
    }

    /// Lists sites by name, with their node, GPU and power totals.
    pub async fn site_list(&self) -> Result<Vec<Site>> {
        self.sites_where("", "").await
    }

    /// Reads one site by id or name.
    pub async fn site_get(&self, id_or_name: &str) -> Result<Site> {
        self.sites_where("WHERE id = $1 OR name = $1", id_or_name)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::NotFound {
                kind: "site",
                id: id_or_name.to_string(),
            })
    }

    async fn sites_where(&self, clause: &str, arg: &str) -> Result<Vec<Site>> {
        let sql = format!(
            "SELECT id, name, region, kind, power_budget_watts, power_cap_watts, pue_milli,
                    energy_micros_per_mwh,
                    created_at FROM sites {clause} ORDER BY name"
        );
        let mut q = sqlx::query(&sql);
        if !clause.is_empty() {
            q = q.bind(arg);
        }
        let rows = self.fetch_all_viewed(q).await?;
        let mut sites = Vec::with_capacity(rows.len());
        for r in &rows {
            let pue_milli = u32_col(r, "pue_milli")?;
            sites.push(Site {
                id: id_col(r, "id")?,
                name: r.try_get("name")?,
                region: r.try_get("region")?,
                kind: enum_col::<SiteKind>(r, "kind")?,
                power_budget_watts: r.try_get("power_budget_watts")?,
                power_cap_watts: r.try_get("power_cap_watts")?,
                pue_milli,
                energy_usd_per_mwh: Money::from_micros(r.try_get("energy_micros_per_mwh")?),
                node_count: 0,
                gpu_count: 0,
                peak_power_watts: 0,
                gpus_by_model: Vec::new(),
                created_at: Timestamp::from_micros(r.try_get("created_at")?),
            });
        }
        if sites.is_empty() {
            return Ok(sites);
        }
        let only = if sites.len() == 1 {
            sites[0].id.to_string()
        } else {
            String::new()
        };
        let totals = sqlx::query(
            "SELECT site_id, gpu_model, COUNT(*) AS nodes, CAST(SUM(gpu_count) AS BIGINT) AS gpus,
                    CAST(SUM(peak_watts) AS BIGINT) AS peak
             FROM nodes WHERE ($1 = '' OR site_id = $1)
             GROUP BY site_id, gpu_model ORDER BY site_id, gpu_model",
        )
        .bind(&only)
        .fetch_all(&self.pool)
        .await?;
        let index: HashMap<String, usize> = sites
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.to_string(), i))
            .collect();
        let mut peak_it: Vec<i64> = vec![0; sites.len()];
        for r in &totals {
            let site_id: String = r.try_get("site_id")?;
            let Some(&i) = index.get(&site_id) else {
                continue;
            };
            let nodes: i64 = r.try_get("nodes")?;
            let gpus: i64 = r.try_get("gpus")?;
            let peak: i64 = r.try_get("peak")?;
            let s = &mut sites[i];
            s.node_count += nodes;
            s.gpu_count += gpus;
            peak_it[i] += peak;
            s.gpus_by_model.push(ModelCount {
                gpu_model: r.try_get("gpu_model")?,
                gpus,
            });
        }
        for (s, peak) in sites.iter_mut().zip(peak_it) {
            s.peak_power_watts = peak.saturating_mul(i64::from(s.pue_milli)) / 1000;
        }
        Ok(sites)
    }

    /// Lists the blocks of a site (or of all sites) by path, with node and GPU totals.
    pub async fn block_list(&self, site: Option<&Site>) -> Result<Vec<Block>> {
        let site_id = site.map(|s| s.id.to_string()).unwrap_or_default();
        let rows = sqlx::query(
            "SELECT id, site_id, name, kind, parent_id, path FROM blocks
             WHERE ($1 = '' OR site_id = $1) ORDER BY site_id, path",
        )
        .bind(&site_id)
        .fetch_all(&self.pool)
        .await?;
        let mut blocks = rows
            .iter()
            .map(|r| {
                Ok(Block {
                    id: id_col(r, "id")?,
                    site_id: id_col(r, "site_id")?,
                    name: r.try_get("name")?,
                    kind: enum_col::<BlockKind>(r, "kind")?,
                    parent_id: opt_id_col(r, "parent_id")?,
                    path: r.try_get("path")?,
                    node_count: 0,
                    gpu_count: 0,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // Totals per exact path, then rolled up to every enclosing path.
        let totals = sqlx::query(
            "SELECT site_id, block_path, COUNT(*) AS nodes, CAST(SUM(gpu_count) AS BIGINT) AS gpus FROM nodes
             WHERE ($1 = '' OR site_id = $1) AND block_path <> ''
             GROUP BY site_id, block_path",
        )
        .bind(&site_id)
        .fetch_all(&self.pool)
        .await?;
        let mut rolled: HashMap<(String, String), (i64, i64)> = HashMap::new();
        for r in &totals {
            let sid: String = r.try_get("site_id")?;
            let path: String = r.try_get("block_path")?;
            let nodes: i64 = r.try_get("nodes")?;
            let gpus: i64 = r.try_get("gpus")?;
            let mut p = path.as_str();
            loop {
                let e = rolled.entry((sid.clone(), p.to_string())).or_default();
                e.0 += nodes;
                e.1 += gpus;
                match p.rfind('/') {
                    Some(i) => p = &p[..i],
                    None => break,
                }
            }
        }
        for b in &mut blocks {
            if let Some((n, g)) = rolled.get(&(b.site_id.to_string(), b.path.clone())) {
                b.node_count = *n;
                b.gpu_count = *g;
            }
        }
        Ok(blocks)
    }

    /// Sets (or with `None` removes) a site's power cap.
    pub async fn site_set_power_cap(
        tx: &mut WriteTx,
        id: SiteId,
        watts: Option<i64>,
    ) -> Result<()> {
        sqlx::query("UPDATE sites SET power_cap_watts = $1 WHERE id = $2")
            .bind(watts)
            .bind(id.to_string())
            .execute(tx.conn())
            .await?;
        Ok(())
    }

    /// The id of a site given by id or name.
    pub async fn site_id_of(&self, id_or_name: &str) -> Result<String> {
        let row = sqlx::query("SELECT id FROM sites WHERE id = $1 OR name = $1")
            .bind(id_or_name)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => Ok(r.try_get("id")?),
            None => Err(StoreError::NotFound {
                kind: "site",
                id: id_or_name.to_string(),
            }),
        }
    }

    /// Reads one block by id.
    pub async fn block_get(&self, id: BlockId) -> Result<Block> {
        let row = sqlx::query("SELECT site_id FROM blocks WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Err(StoreError::NotFound {
                kind: "block",
                id: id.to_string(),
            });
        };
        let site_id: String = row.try_get("site_id")?;
        let site = self.site_get(&site_id).await?;
        self.block_list(Some(&site))
            .await?
            .into_iter()
            .find(|b| b.id == id)
            .ok_or_else(|| StoreError::NotFound {
                kind: "block",
                id: id.to_string(),
            })
    }

    /// Lists nodes by name, a page at a time.
    pub async fn node_list(
        &self,
        filter: &NodeFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Node>> {
        let mut site_id = String::new();
        if let Some(site) = &filter.site {
            site_id = self.site_id_of(site).await?;
        }
        let mut path = String::new();
        if let Some(block) = &filter.block {
            let row = sqlx::query(
                "SELECT site_id, path FROM blocks
                 WHERE id = $1 OR (site_id = $2 AND (name = $1 OR path = $1))",
            )
            .bind(block)
            .bind(&site_id)
            .fetch_optional(&self.pool)
            .await?;
            let Some(row) = row else {
                return Err(StoreError::NotFound {
                    kind: "block",
                    id: block.clone(),
                });
            };
            site_id = row.try_get("site_id")?;
            path = row.try_get("path")?;
        }
        // Only the filters given go into the statement, so each shape of query gets a plan
        // that uses its index (site and name, or site and block path) instead of a scan.
        let mut sql = format!(
            "SELECT {NODE_COLS} FROM nodes n JOIN sites s ON s.id = n.site_id WHERE n.name > $1"
        );
        let mut args: Vec<String> = vec![cursor.unwrap_or("").to_string()];
        let mut arg = |sql: &mut String, clause: &str, value: String| {
            args.push(value);
            sql.push_str(&clause.replace('?', &format!("${}", args.len())));
        };
        if !site_id.is_empty() {
            arg(&mut sql, " AND n.site_id = ?", site_id);
        }
        if !path.is_empty() {
            // Nodes in the block itself or in any block below it: '/' + 1 is '0'.
            arg(&mut sql, " AND n.block_path >= ?", path.clone());
            arg(&mut sql, " AND n.block_path < ?", format!("{path}0"));
            let below = format!("{path}/");
            arg(&mut sql, " AND (n.block_path = ?", path);
            arg(&mut sql, " OR n.block_path >= ?)", below);
        }
        if let Some(state) = filter.state {
            arg(&mut sql, " AND n.state = ?", state.as_str().to_string());
        }
        if let Some(model) = &filter.gpu_model {
            arg(&mut sql, " AND n.gpu_model = ?", model.clone());
        }
        sql.push_str(&format!(" ORDER BY n.name LIMIT {}", i64::from(limit) + 1));
        let mut q = sqlx::query(&sql);
        for a in &args {
            q = q.bind(a.as_str());
        }
        let rows = q.fetch_all(&self.pool).await?;
        let mut items = rows.iter().map(node_from_row).collect::<Result<Vec<_>>>()?;
        Ok(paginate(&mut items, limit, |n| n.name.clone()))
    }

    /// Reads one node by id or name, with its GPUs.
    pub async fn node_get(&self, id_or_name: &str) -> Result<Node> {
        let row = sqlx::query(&format!(
            "SELECT {NODE_COLS} FROM nodes n JOIN sites s ON s.id = n.site_id
             WHERE n.id = $1 OR n.name = $1"
        ))
        .bind(id_or_name)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Err(StoreError::NotFound {
                kind: "node",
                id: id_or_name.to_string(),
            });
        };
        let mut node = node_from_row(&row)?;
        let gpus =
            sqlx::query("SELECT idx, uuid, health, product, serial, pci_bus_id FROM gpus WHERE node_id = $1 ORDER BY idx")
                .bind(node.id.to_string())
                .fetch_all(&self.pool)
                .await?;
        node.gpus = Some(
            gpus.iter()
                .map(|r| {
                    Ok(Gpu {
                        index: u32_col(r, "idx")?,
                        uuid: r.try_get("uuid")?,
                        health: enum_col::<GpuHealth>(r, "health")?,
                        product: r.try_get("product")?,
                        serial: r.try_get("serial")?,
                        pci_bus_id: r.try_get("pci_bus_id")?,
                        telemetry: None,
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        );
        Ok(node)
    }

    /// Applies a parsed fleet file inside `tx`: adds what is new, updates what changed and
    /// removes nodes and blocks of the file's sites that the file no longer lists. Refuses
    /// (with every reason) to remove or reshape a node that holds allocated GPUs, or to
    /// change a built-in GPU model. Sites the file does not name are left alone.
    pub async fn fleet_import(
        tx: &mut WriteTx,
        spec: &FleetSpec,
        actor: Option<neocloud_types::ApiKeyId>,
    ) -> Result<ImportReport> {
        let mut report = ImportReport::default();
        let mut problems: Vec<String> = Vec::new();
        let now = tx.now().micros();

        // GPU models.
        let existing_models: HashMap<String, GpuModel> = {
            let rows = sqlx::query(&format!("SELECT {GPU_MODEL_COLS} FROM gpu_models"))
                .fetch_all(tx.conn())
                .await?;
            rows.iter()
                .map(|r| gpu_model_from_row(r).map(|m| (m.name.clone(), m)))
                .collect::<Result<_>>()?
        };
        for m in &spec.gpu_models {
            match existing_models.get(&m.name) {
                Some(e)
                    if e.vendor == m.vendor
                        && e.memory_gib == m.memory_gib
                        && e.tdp_watts == m.tdp_watts
                        && e.topology == m.topology => {}
                Some(e) if e.builtin => problems.push(format!(
                    "GPU model '{}' is built in and cannot be redefined",
                    m.name
                )),
                Some(_) => {
                    sqlx::query(
                        "UPDATE gpu_models SET vendor = $1, memory_gib = $2, tdp_watts = $3,
                                               topology = $4
                         WHERE name = $5",
                    )
                    .bind(&m.vendor)
                    .bind(i64::from(m.memory_gib))
                    .bind(i64::from(m.tdp_watts))
                    .bind(topology_col(&m.name, m.topology))
                    .bind(&m.name)
                    .execute(tx.conn())
                    .await?;
                    report.gpu_models_updated += 1;
                }
                None => {
                    Self::gpu_model_create(
                        tx,
                        &GpuModel {
                            name: m.name.clone(),
                            vendor: m.vendor.clone(),
                            memory_gib: m.memory_gib,
                            tdp_watts: m.tdp_watts,
                            builtin: false,
                            topology: m.topology,
                        },
                    )
                    .await?;
                    report.gpu_models_added += 1;
                }
            }
        }

        // Every node the database holds, with whether it holds allocated GPUs.
        let mut existing_nodes: HashMap<String, ExistingNode> = HashMap::new();
        {
            let rows = sqlx::query(
                "SELECT id, name, site_id, block_id, block_path, gpu_model, gpu_count, cpu_cores,
                        ram_gib, idle_watts, peak_watts FROM nodes",
            )
            .fetch_all(tx.conn())
            .await?;
            for r in &rows {
                existing_nodes.insert(
                    r.try_get("name")?,
                    ExistingNode {
                        id: r.try_get("id")?,
                        site_id: r.try_get("site_id")?,
                        block_id: r.try_get("block_id")?,
                        block_path: r.try_get("block_path")?,
                        gpu_model: r.try_get("gpu_model")?,
                        gpu_count: r.try_get("gpu_count")?,
                        cpu_cores: r.try_get("cpu_cores")?,
                        ram_gib: r.try_get("ram_gib")?,
                        idle_watts: r.try_get("idle_watts")?,
                        peak_watts: r.try_get("peak_watts")?,
                    },
                );
            }
        }
        let held: HashMap<String, i64> = {
            let rows = sqlx::query(
                "SELECT node_id, CAST(COUNT(*) AS BIGINT) AS n FROM (
                     SELECT node_id FROM gpus WHERE holder IS NOT NULL
                     UNION ALL SELECT g.node_id FROM node_holds w JOIN gpus g ON g.node_id = w.node_id
                     UNION ALL SELECT node_id FROM instance_slices) h GROUP BY node_id",
            )
            .fetch_all(tx.conn())
            .await?;
            rows.iter()
                .map(|r| Ok((r.try_get("node_id")?, r.try_get("n")?)))
                .collect::<Result<_>>()?
        };
        let site_names: HashMap<String, String> = {
            let rows = sqlx::query("SELECT id, name FROM sites")
                .fetch_all(tx.conn())
                .await?;
            rows.iter()
                .map(|r| Ok((r.try_get("id")?, r.try_get("name")?)))
                .collect::<Result<_>>()?
        };

        let mut seen_nodes: HashSet<&str> = HashSet::new();
        let mut new_nodes: Vec<Vec<Val>> = Vec::new();
        let mut new_gpus: Vec<Vec<Val>> = Vec::new();
        let mut spec_site_ids: HashSet<String> = HashSet::new();
        let mut keep_blocks: HashSet<String> = HashSet::new();

        for site in &spec.sites {
            let site_id = Self::site_upsert(tx, site, now, &mut report).await?;
            spec_site_ids.insert(site_id.clone());
            let blocks = Self::blocks_upsert(tx, &site_id, site, now, &mut report).await?;
            keep_blocks.extend(blocks.values().cloned());
            for n in &site.nodes {
                seen_nodes.insert(n.name.as_str());
                let block_id = n.block.as_ref().and_then(|b| blocks.get(b)).cloned();
                match existing_nodes.get(&n.name) {
                    None => {
                        let id = NodeId::new().to_string();
                        for idx in 0..n.gpu_count {
                            new_gpus.push(gpu_row(&id, idx));
                        }
                        report.gpus_added += u64::from(n.gpu_count);
                        new_nodes.push(node_row(&id, &site_id, block_id, n, now));
                        report.nodes_added += 1;
                    }
                    Some(e) => {
                        if e.site_id != site_id
                            && !spec.sites.iter().any(|s| {
                                site_names
                                    .get(&e.site_id)
                                    .is_some_and(|name| name == &s.name)
                            })
                        {
                            problems.push(format!(
                                "node '{}' already exists in site '{}'",
                                n.name,
                                site_names.get(&e.site_id).map_or("?", |s| s.as_str())
                            ));
                            continue;
                        }
                        let same = e.site_id == site_id
                            && e.block_id == block_id
                            && e.block_path == n.block_path
                            && e.gpu_model == n.gpu_model
                            && e.gpu_count == i64::from(n.gpu_count)
                            && e.cpu_cores == i64::from(n.cpu_cores)
                            && e.ram_gib == i64::from(n.ram_gib)
                            && e.idle_watts == i64::from(n.idle_watts)
                            && e.peak_watts == i64::from(n.peak_watts);
                        if same {
                            report.nodes_unchanged += 1;
                            continue;
                        }
                        let reshaped = e.site_id != site_id
                            || e.gpu_model != n.gpu_model
                            || e.gpu_count != i64::from(n.gpu_count);
                        if reshaped && let Some(h) = held.get(&e.id) {
                            problems.push(format!(
                                "node '{}' holds {h} allocated GPU(s): its site, GPU model and GPU count cannot change",
                                n.name
                            ));
                            continue;
                        }
                        Self::node_update(tx, e, &site_id, block_id.as_deref(), n, now).await?;
                        if e.gpu_count != i64::from(n.gpu_count) {
                            sqlx::query("DELETE FROM gpus WHERE node_id = $1")
                                .bind(&e.id)
                                .execute(tx.conn())
                                .await?;
                            report.gpus_removed += u64::try_from(e.gpu_count).unwrap_or(0);
                            report.gpus_added += u64::from(n.gpu_count);
                            for idx in 0..n.gpu_count {
                                new_gpus.push(gpu_row(&e.id, idx));
                            }
                        }
                        report.nodes_updated += 1;
                    }
                }
            }
        }

        // Nodes of the file's sites that the file no longer lists.
        let mut removed: Vec<&ExistingNode> = Vec::new();
        for (name, e) in &existing_nodes {
            if !spec_site_ids.contains(&e.site_id) || seen_nodes.contains(name.as_str()) {
                continue;
            }
            if let Some(h) = held.get(&e.id) {
                problems.push(format!(
                    "refusing to remove node '{name}': it holds {h} allocated GPU(s); drain it first"
                ));
                continue;
            }
            removed.push(e);
        }
        if !problems.is_empty() {
            problems.sort();
            let total = problems.len();
            problems.truncate(20);
            let mut msg = format!("the fleet file cannot be applied: {}", problems.join("; "));
            if total > 20 {
                msg.push_str(&format!(" (and {} more)", total - 20));
            }
            return Err(StoreError::Invalid(msg));
        }
        for e in &removed {
            sqlx::query("DELETE FROM gpus WHERE node_id = $1")
                .bind(&e.id)
                .execute(tx.conn())
                .await?;
            sqlx::query("DELETE FROM nodes WHERE id = $1")
                .bind(&e.id)
                .execute(tx.conn())
                .await?;
            report.nodes_removed += 1;
            report.gpus_removed += u64::try_from(e.gpu_count).unwrap_or(0);
        }

        bulk_insert(
            tx.conn(),
            "nodes",
            &[
                "id",
                "name",
                "site_id",
                "block_id",
                "block_path",
                "gpu_model",
                "gpu_count",
                "cpu_cores",
                "ram_gib",
                "idle_watts",
                "peak_watts",
                "state",
                "created_at",
                "updated_at",
            ],
            new_nodes,
        )
        .await?;
        bulk_insert(
            tx.conn(),
            "gpus",
            &["node_id", "idx", "uuid", "health"],
            new_gpus,
        )
        .await?;

        // Blocks of the file's sites that the file no longer lists, innermost first.
        for site_id in &spec_site_ids {
            let rows = sqlx::query("SELECT id, path FROM blocks WHERE site_id = $1")
                .bind(site_id)
                .fetch_all(tx.conn())
                .await?;
            let mut stale: Vec<(String, String)> = rows
                .iter()
                .map(|r| Ok((r.try_get("path")?, r.try_get("id")?)))
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .filter(|(_, id)| !keep_blocks.contains(id))
                .collect();
            stale.sort_by_key(|b| std::cmp::Reverse(b.0.matches('/').count()));
            for (_, id) in stale {
                sqlx::query("DELETE FROM blocks WHERE id = $1")
                    .bind(&id)
                    .execute(tx.conn())
                    .await?;
                report.blocks_removed += 1;
            }
        }

        Self::event_insert(
            tx,
            NewEvent {
                actor,
                tenant_id: None,
                action: "fleet.imported",
                resource_kind: "fleet",
                resource_id: spec
                    .sites
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                before: None,
                after: serde_json::to_value(&report).ok(),
            },
        )
        .await?;
        Ok(report)
    }

    async fn site_upsert(
        tx: &mut WriteTx,
        site: &SiteSpec,
        now: i64,
        report: &mut ImportReport,
    ) -> Result<String> {
        let row = sqlx::query(
            "SELECT id, region, kind, power_budget_watts, pue_milli, energy_micros_per_mwh
             FROM sites WHERE name = $1",
        )
        .bind(&site.name)
        .fetch_optional(tx.conn())
        .await?;
        if let Some(r) = row {
            let id: String = r.try_get("id")?;
            let same = r.try_get::<String, _>("region")? == site.region
                && r.try_get::<String, _>("kind")? == site.kind.as_str()
                && r.try_get::<i64, _>("power_budget_watts")? == site.power_budget_watts
                && r.try_get::<i64, _>("pue_milli")? == i64::from(site.pue_milli)
                && r.try_get::<i64, _>("energy_micros_per_mwh")?
                    == site.energy_usd_per_mwh.micros();
            if !same {
                sqlx::query(
                    "UPDATE sites SET region = $1, kind = $2, power_budget_watts = $3,
                     pue_milli = $4, energy_micros_per_mwh = $5, updated_at = $6 WHERE id = $7",
                )
                .bind(&site.region)
                .bind(site.kind.as_str())
                .bind(site.power_budget_watts)
                .bind(i64::from(site.pue_milli))
                .bind(site.energy_usd_per_mwh.micros())
                .bind(now)
                .bind(&id)
                .execute(tx.conn())
                .await?;
                report.sites_updated += 1;
            }
            return Ok(id);
        }
        let id = SiteId::new().to_string();
        sqlx::query(
            "INSERT INTO sites (id, name, region, kind, power_budget_watts, pue_milli,
             energy_micros_per_mwh, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&id)
        .bind(&site.name)
        .bind(&site.region)
        .bind(site.kind.as_str())
        .bind(site.power_budget_watts)
        .bind(i64::from(site.pue_milli))
        .bind(site.energy_usd_per_mwh.micros())
        .bind(now)
        .bind(now)
        .execute(tx.conn())
        .await?;
        report.sites_added += 1;
        Ok(id)
    }

    /// Creates or updates the blocks of one site; returns block name → id for the file's
    /// blocks.
    async fn blocks_upsert(
        tx: &mut WriteTx,
        site_id: &str,
        site: &SiteSpec,
        now: i64,
        report: &mut ImportReport,
    ) -> Result<BTreeMap<String, String>> {
        let rows =
            sqlx::query("SELECT id, name, kind, parent_id, path FROM blocks WHERE site_id = $1")
                .bind(site_id)
                .fetch_all(tx.conn())
                .await?;
        let mut existing: HashMap<String, ExistingBlock> = HashMap::new();
        for r in &rows {
            existing.insert(
                r.try_get("name")?,
                ExistingBlock {
                    id: r.try_get("id")?,
                    kind: r.try_get("kind")?,
                    parent_id: r.try_get("parent_id")?,
                    path: r.try_get("path")?,
                },
            );
        }
        let mut ids: BTreeMap<String, String> = BTreeMap::new();
        let mut new_rows: Vec<Vec<Val>> = Vec::new();
        // The fleet parser orders parents before children, so a parent's id is known first.
        for b in &site.blocks {
            let parent_id = b.parent.as_ref().and_then(|p| ids.get(p)).cloned();
            match existing.get(&b.name) {
                Some(e) => {
                    if e.kind != b.kind.as_str() || e.parent_id != parent_id || e.path != b.path {
                        sqlx::query(
                            "UPDATE blocks SET kind = $1, parent_id = $2, path = $3 WHERE id = $4",
                        )
                        .bind(b.kind.as_str())
                        .bind(parent_id.clone())
                        .bind(&b.path)
                        .bind(&e.id)
                        .execute(tx.conn())
                        .await?;
                        report.blocks_updated += 1;
                    }
                    ids.insert(b.name.clone(), e.id.clone());
                }
                None => {
                    let id = BlockId::new().to_string();
                    new_rows.push(vec![
                        Val::S(id.clone()),
                        Val::S(site_id.to_string()),
                        Val::S(b.name.clone()),
                        Val::S(b.kind.as_str().to_string()),
                        Val::OS(parent_id),
                        Val::S(b.path.clone()),
                        Val::I(now),
                    ]);
                    ids.insert(b.name.clone(), id);
                    report.blocks_added += 1;
                }
            }
        }
        // Parents precede children in `new_rows`, and each chunk is one statement, so the
        // foreign key from a child to a parent inserted in the same statement holds.
        bulk_insert(
            tx.conn(),
            "blocks",
            &[
                "id",
                "site_id",
                "name",
                "kind",
                "parent_id",
                "path",
                "created_at",
            ],
            new_rows,
        )
        .await?;
        Ok(ids)
    }

    async fn node_update(
        tx: &mut WriteTx,
        e: &ExistingNode,
        site_id: &str,
        block_id: Option<&str>,
        n: &NodeSpec,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE nodes SET site_id = $1, block_id = $2, block_path = $3, gpu_model = $4,
             gpu_count = $5, cpu_cores = $6, ram_gib = $7, idle_watts = $8, peak_watts = $9,
             updated_at = $10 WHERE id = $11",
        )
        .bind(site_id)
        .bind(block_id)
        .bind(&n.block_path)
        .bind(&n.gpu_model)
        .bind(i64::from(n.gpu_count))
        .bind(i64::from(n.cpu_cores))
        .bind(i64::from(n.ram_gib))
        .bind(i64::from(n.idle_watts))
        .bind(i64::from(n.peak_watts))
        .bind(now)
        .bind(&e.id)
        .execute(tx.conn())
        .await?;
        Ok(())
    }
}

fn node_row(id: &str, site_id: &str, block_id: Option<String>, n: &NodeSpec, now: i64) -> Vec<Val> {
    vec![
        Val::S(id.to_string()),
        Val::S(n.name.clone()),
        Val::S(site_id.to_string()),
        Val::OS(block_id),
        Val::S(n.block_path.clone()),
        Val::S(n.gpu_model.clone()),
        Val::I(i64::from(n.gpu_count)),
        Val::I(i64::from(n.cpu_cores)),
        Val::I(i64::from(n.ram_gib)),
        Val::I(i64::from(n.idle_watts)),
        Val::I(i64::from(n.peak_watts)),
        // New nodes enter service directly, or through their agent's burn-in when the fleet
        // file asks for it.
        Val::S(
            if n.burn_in {
                NodeState::Provisioning
            } else {
                NodeState::Available
            }
            .as_str()
            .to_string(),
        ),
        Val::I(now),
        Val::I(now),
    ]
}

fn gpu_row(node_id: &str, idx: u32) -> Vec<Val> {
    vec![
        Val::S(node_id.to_string()),
        Val::I(i64::from(idx)),
        Val::OS(None),
        Val::S(GpuHealth::Healthy.as_str().to_string()),
    ]
}
