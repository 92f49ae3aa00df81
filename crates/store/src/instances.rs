//! Instances and the GPUs they hold, quotas, and what the allocator is rebuilt from.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::LazyLock;

use neocloud_types::{
    BlockId, BlockKind, Class, ContractId, GangLevel, GpuIndexes, Instance, InstanceId,
    InstanceState, NodeFailurePolicy, NodeId, NodeName, NodeState, PlacedNode, PlacedNodes, Quota,
    Shape, TenantId, Timestamp,
};
use sqlx::Row;
use sqlx::any::AnyRow;

mod packed;
use packed::{Col, Fields};

use crate::tenancy::paginate;
use crate::{Page, Result, Store, StoreError, WriteTx, enum_col, id_col, u32_col};

const INSTANCE_COLS: &str = "id, tenant_id, name, class, gpu_model, shape_kind, shape_gpus, \
     shape_count, shape_level, gpu_count, requested_site_id, site_id, contract_id, state, reason, \
     created_at, started_at, ended_at, preempt_at, wait_until, cpu_milli, memory_mib, gpu_milli, \
     held_cpu_milli, held_memory_mib, delivery, access, ends_as, on_node_failure, gpu_models";

/// What the `delivery` column holds: fixed at launch.
#[derive(serde::Serialize, serde::Deserialize)]
struct DeliveryCol {
    delivery: neocloud_types::Delivery,
    #[serde(default)]
    ssh_key_names: Vec<String>,
    #[serde(default)]
    authorized_keys: Vec<String>,
}

fn json_of<T: serde::de::DeserializeOwned>(text: Option<&str>, c: &str) -> Result<Option<T>> {
    text.map(|s| serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{c}: {e}"))))
        .transpose()
}

fn delivery_json(i: &Instance) -> Option<String> {
    let d = i.delivery.clone()?;
    serde_json::to_string(&DeliveryCol {
        delivery: d,
        ssh_key_names: i.ssh_key_names.clone(),
        authorized_keys: i.authorized_keys.clone(),
    })
    .ok()
}

fn access_json(i: &Instance) -> Option<String> {
    i.access
        .as_ref()
        .and_then(|a| serde_json::to_string(a).ok())
}

fn opt_i64(v: Option<u64>) -> Option<i64> {
    v.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

/// The values of one `instances` row, in [`INSTANCE_COLS`] order.
pub(crate) struct NewInstanceRow {
    text: [Option<String>; 17],
    ints: [Option<i64>; 13],
}

/// The `gpu_models` column: the accepted models joined by commas (a model name has none);
/// NULL when the launch named one.
fn gpu_models_col(i: &Instance) -> Option<String> {
    (!i.gpu_models.is_empty()).then(|| i.gpu_models.join(","))
}

impl NewInstanceRow {
    /// Values per row.
    const COLS: usize = 30;

    fn of(i: &Instance, held: Option<&Held>) -> NewInstanceRow {
        let (kind, gpus, count, level) = match i.shape {
            Shape::Gpus { gpus } => ("gpus", Some(i64::from(gpus)), None, None),
            Shape::Nodes { count, level } => {
                ("nodes", None, Some(i64::from(count)), Some(level.as_str()))
            }
            // A share keeps its thousandths where whole GPUs keep their count, a MIG
            // instance its profile where a gang keeps its level.
            Shape::Share { milli } => ("share", Some(i64::from(milli)), None, None),
            Shape::Mig { profile } => ("mig", None, None, Some(profile.as_str())),
            Shape::Cpu => ("cpu", None, None, None),
        };
        let t = |t: Option<Timestamp>| t.map(|t| t.micros());
        NewInstanceRow {
            text: [
                Some(i.id.to_string()),
                Some(i.tenant_id.to_string()),
                i.name.clone(),
                Some(i.class.as_str().to_string()),
                Some(i.gpu_model.clone()),
                Some(kind.to_string()),
                level.map(str::to_string),
                i.requested_site_id.map(|s| s.to_string()),
                i.site_id.map(|s| s.to_string()),
                i.contract_id.map(|c| c.to_string()),
                Some(i.state.as_str().to_string()),
                i.reason.clone(),
                delivery_json(i),
                access_json(i),
                i.ends_as.map(|s| s.as_str().to_string()),
                Some(i.on_node_failure.as_str().to_string()),
                gpu_models_col(i),
            ],
            ints: [
                gpus,
                count,
                Some(i64::from(i.gpu_count)),
                Some(i.created_at.micros()),
                t(i.started_at),
                t(i.ended_at),
                t(i.preempt_at),
                t(i.wait_until),
                opt_i64(i.cpu_milli),
                opt_i64(i.memory_mib),
                opt_i64(Some(i.shape.gpu_milli(i.gpu_count))),
                held.and_then(|h| opt_i64(Some(h.cpu_milli))),
                held.and_then(|h| opt_i64(Some(h.memory_mib))),
            ],
        }
    }

    /// Binds the row's values in column order.
    fn bind<'q>(
        &'q self,
        q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        let [
            id,
            tenant,
            name,
            class,
            model,
            kind,
            level,
            req_site,
            site,
            contract,
            state,
            reason,
            delivery,
            access,
            ends_as,
            on_node_failure,
            gpu_models,
        ] = &self.text;
        let [
            gpus,
            count,
            gpu_count,
            created,
            started,
            ended,
            preempt,
            wait,
            cpu,
            mem,
            milli,
            held_cpu,
            held_mem,
        ] = &self.ints;
        q.bind(id)
            .bind(tenant)
            .bind(name)
            .bind(class)
            .bind(model)
            .bind(kind)
            .bind(gpus)
            .bind(count)
            .bind(level)
            .bind(gpu_count)
            .bind(req_site)
            .bind(site)
            .bind(contract)
            .bind(state)
            .bind(reason)
            .bind(created)
            .bind(started)
            .bind(ended)
            .bind(preempt)
            .bind(wait)
            .bind(cpu)
            .bind(mem)
            .bind(milli)
            .bind(held_cpu)
            .bind(held_mem)
            .bind(delivery)
            .bind(access)
            .bind(ends_as)
            .bind(on_node_failure)
            .bind(gpu_models)
    }
}

/// An instance row and what its placement holds on each node besides GPUs.
struct InstanceRow {
    inst: Instance,
    held: (Option<u64>, Option<u64>),
}

impl InstanceRow {
    /// Reads a row of [`instance_select`].
    fn read(r: &AnyRow) -> Result<InstanceRow> {
        InstanceRow::parse(Fields::of(r, INSTANCE_READ)?)
    }

    /// Reads a record of [`INSTANCE_READ`].
    fn parse(mut f: Fields<'_>) -> Result<InstanceRow> {
        let id = f.parse()?;
        let tenant_id = f.parse()?;
        let name = f.opt_text()?.map(Cow::into_owned);
        let class = f.parse::<Class>()?;
        let gpu_model = f.owned_text()?;
        let kind = f.text()?;
        let shape_gpus = f.opt_parse::<i64>()?;
        let shape_count = f.opt_parse::<i64>()?;
        let shape_level = f.opt()?;
        let gpu_count = u32_of(Some(f.parse()?), "gpu_count")?;
        let requested_site_id = f.opt_parse()?;
        let site_id = f.opt_parse()?;
        let contract_id = f.opt_parse()?;
        let state = f.parse::<InstanceState>()?;
        let reason = f.opt_text()?.map(Cow::into_owned);
        let created_at = Timestamp::from_micros(f.parse()?);
        let mut time = || Ok::<_, StoreError>(f.opt_parse()?.map(Timestamp::from_micros));
        let (started_at, ended_at, preempt_at, wait_until) = (time()?, time()?, time()?, time()?);
        let cpu_milli = u64_of(f.opt_parse()?, "cpu_milli")?;
        let memory_mib = u64_of(f.opt_parse()?, "memory_mib")?;
        let held = (
            u64_of(f.opt_parse()?, "held_cpu_milli")?,
            u64_of(f.opt_parse()?, "held_memory_mib")?,
        );
        let delivery: Option<DeliveryCol> = json_of(f.opt_text()?.as_deref(), "delivery")?;
        let access = json_of(f.opt_text()?.as_deref(), "access")?;
        let ends_as = f.opt_parse::<InstanceState>()?;
        let on_node_failure = f.opt_parse::<NodeFailurePolicy>()?;
        let gpu_models = f
            .opt_text()?
            .map(|t| t.split(',').map(str::to_string).collect())
            .unwrap_or_default();
        f.end()?;
        let shape = match kind {
            "gpus" => Shape::Gpus {
                gpus: u32_of(shape_gpus, "shape_gpus")?,
            },
            "nodes" => Shape::Nodes {
                count: u32_of(shape_count, "shape_count")?,
                level: shape_level
                    .unwrap_or_default()
                    .parse::<GangLevel>()
                    .map_err(StoreError::Corrupt)?,
            },
            "share" => Shape::Share {
                milli: u32_of(shape_gpus, "shape_gpus")?,
            },
            "mig" => Shape::Mig {
                profile: shape_level
                    .unwrap_or_default()
                    .parse()
                    .map_err(StoreError::Corrupt)?,
            },
            "cpu" => Shape::Cpu,
            other => return Err(StoreError::Corrupt(format!("shape_kind {other}"))),
        };
        let (delivery, ssh_key_names, authorized_keys) = match delivery {
            Some(d) => (Some(d.delivery), d.ssh_key_names, d.authorized_keys),
            None => (None, Vec::new(), Vec::new()),
        };
        let inst = Instance {
            id,
            tenant_id,
            name,
            class,
            gpu_model,
            gpu_models,
            shape,
            gpu_count,
            cpu_milli,
            memory_mib,
            requested_site_id,
            site_id,
            contract_id,
            state,
            reason,
            placement: PlacedNodes::default(),
            placement_summary: None,
            created_at,
            started_at,
            ended_at,
            preempt_at,
            wait_until,
            delivery,
            ssh_key_names,
            authorized_keys,
            access,
            ends_as,
            on_node_failure: on_node_failure
                .unwrap_or_else(|| NodeFailurePolicy::default_for(&shape)),
        };
        Ok(InstanceRow { inst, held })
    }

    /// The instance with `placement`, each node marked with the CPU and memory it holds.
    fn with(self, placement: Option<Vec<PlacedNode>>) -> Instance {
        let mut i = self.inst;
        let mut placement = placement.unwrap_or_default();
        for p in &mut placement {
            p.cpu_milli = self.held.0;
            p.memory_mib = self.held.1;
        }
        i.placement = placement.into();
        i
    }
}

/// The columns of `instances` as [`InstanceRow::parse`] reads them, in this order.
const INSTANCE_READ: &[Col] = &[
    Col::Plain("id"),
    Col::Plain("tenant_id"),
    Col::Text("name"),
    Col::Plain("class"),
    Col::Text("gpu_model"),
    Col::Plain("shape_kind"),
    Col::Plain("shape_gpus"),
    Col::Plain("shape_count"),
    Col::Plain("shape_level"),
    Col::Plain("gpu_count"),
    Col::Plain("requested_site_id"),
    Col::Plain("site_id"),
    Col::Plain("contract_id"),
    Col::Plain("state"),
    Col::Text("reason"),
    Col::Plain("created_at"),
    Col::Plain("started_at"),
    Col::Plain("ended_at"),
    Col::Plain("preempt_at"),
    Col::Plain("wait_until"),
    Col::Plain("cpu_milli"),
    Col::Plain("memory_mib"),
    Col::Plain("held_cpu_milli"),
    Col::Plain("held_memory_mib"),
    Col::Text("delivery"),
    Col::Text("access"),
    Col::Plain("ends_as"),
    Col::Plain("on_node_failure"),
    Col::Text("gpu_models"),
];

/// What `SELECT … FROM instances` selects for [`InstanceRow::read`]: the row as one record.
fn instance_select() -> &'static str {
    static SELECT: LazyLock<String> =
        LazyLock::new(|| format!("{} AS packed", packed::record_sql(INSTANCE_READ)));
    &SELECT
}

/// A count stored as BIGINT that must fit 32 bits.
fn u32_of(v: Option<i64>, col: &str) -> Result<u32> {
    u32::try_from(v.unwrap_or(0)).map_err(|_| StoreError::Corrupt(col.into()))
}

/// A non-negative quantity stored as BIGINT.
fn u64_of(v: Option<i64>, col: &str) -> Result<Option<u64>> {
    v.map(|v| u64::try_from(v).map_err(|_| StoreError::Corrupt(col.into())))
        .transpose()
}

/// Runs `f` on a thread of its own, so that decoding a large read does not hold up the
/// reads beside it.
async fn off_thread<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => Err(StoreError::Invalid(format!("a read was cancelled: {e}"))),
        },
    }
}

/// The placements of live instances from the batches of [`Store::instance_list_live`]:
/// `held` (each holder's GPUs), `slices` (slices and CPU-only instances) and `names` (each
/// node's name). Each holder's nodes are ordered by name, each node's GPUs by index (as a
/// read of one instance orders them); a GPU or slice of a node that is gone is left out.
fn live_placements(
    held: &[AnyRow],
    slices: &[AnyRow],
    names: &[AnyRow],
) -> Result<HashMap<InstanceId, Vec<PlacedNode>>> {
    let node_id = |id: &str| {
        id.parse::<NodeId>()
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    };
    let mut node_names: HashMap<&str, Cow<'_, str>> = HashMap::new();
    for r in names {
        for rec in packed::records(r)? {
            let mut f = Fields::new(rec, NAMES);
            let (id, name) = (f.text()?, f.opt_text()?.unwrap_or_default());
            f.end()?;
            node_names.insert(id, name);
        }
    }
    let mut by_holder: HashMap<InstanceId, Vec<PlacedNode>> = HashMap::new();
    let mut gpus: Vec<(&str, u32)> = Vec::new();
    for r in held {
        for rec in packed::records(r)? {
            let mut f = Fields::new(rec, HELD);
            let (holder, list) = (f.text()?, f.text()?);
            f.end()?;
            // A holder that is no instance's id holds for nothing live (the instances read
            // beside it say what is): left out, as a holder of no live instance is.
            let Ok(holder) = holder.parse::<InstanceId>() else {
                continue;
            };
            gpus.clear();
            for g in list.split('/') {
                let parsed = g
                    .split_once(':')
                    .and_then(|(node, idx)| Some((node, idx.parse().ok()?)));
                let Some(g) = parsed else {
                    return Err(StoreError::Corrupt(format!("GPUs of {holder}: '{g}'")));
                };
                gpus.push(g);
            }
            gpus.sort_unstable();
            let mut placed: Vec<PlacedNode> = Vec::new();
            for group in gpus.chunk_by(|a, b| a.0 == b.0) {
                let node = group[0].0;
                let Some(name) = node_names.get(node) else {
                    continue;
                };
                placed.push(PlacedNode {
                    node_id: node_id(node)?,
                    node: NodeName::from(&name[..]),
                    gpus: group.iter().map(|&(_, idx)| idx).collect(),
                    mig_start: None,
                    cpu_milli: None,
                    memory_mib: None,
                });
            }
            placed.sort_by(|a, b| a.node.cmp(&b.node));
            by_holder.insert(holder, placed);
        }
    }
    for r in slices {
        for rec in packed::records(r)? {
            let mut f = Fields::new(rec, SLICES);
            let (instance, node) = (f.parse::<InstanceId>()?, f.text()?);
            let idx = f.opt_parse::<u32>()?;
            let mig_start = f.opt_parse::<u32>()?;
            f.end()?;
            let Some(name) = node_names.get(node) else {
                continue;
            };
            by_holder.entry(instance).or_default().push(PlacedNode {
                node_id: node_id(node)?,
                node: NodeName::from(&name[..]),
                gpus: idx.into_iter().collect(),
                mig_start,
                cpu_milli: None,
                memory_mib: None,
            });
        }
    }
    Ok(by_holder)
}

/// The GPUs of each holder, `node:index/node:index/…`, for [`live_placements`].
const HELD: &[Col] = &[Col::Plain("h.holder"), Col::Plain("h.gpus")];
/// Slices and CPU-only instances, for [`live_placements`].
const SLICES: &[Col] = &[
    Col::Plain("instance_id"),
    Col::Plain("node_id"),
    Col::Plain("idx"),
    Col::Plain("mig_start"),
];
/// Each node's name, for [`live_placements`].
const NAMES: &[Col] = &[Col::Plain("id"), Col::Text("name")];

/// Each holder's whole GPUs, a record per node: holder, node id, node name and the node's GPU
/// indexes (`0/1/…`), for [`group_placements`].
const HELD_NODES: &[Col] = &[
    Col::Plain("g.holder"),
    Col::Plain("g.node_id"),
    Col::Text("n.name"),
    Col::Plain("string_agg(CAST(g.idx AS TEXT), '/')"),
];

/// Nodes held whole, a record each: holder, node id, node name and its GPU count, for
/// [`add_whole_nodes`].
const WHOLE_NODES: &[Col] = &[
    Col::Plain("h.holder"),
    Col::Plain("h.node_id"),
    Col::Text("n.name"),
    Col::Plain("n.gpu_count"),
];

/// Adds the records of [`WHOLE_NODES`] to the placements, nodes kept in name order.
fn add_whole_nodes(out: &mut HashMap<String, Vec<PlacedNode>>, rows: &[AnyRow]) -> Result<()> {
    for r in rows {
        for rec in packed::records(r)? {
            let mut f = Fields::new(rec, WHOLE_NODES);
            let holder = f.text()?.to_string();
            let node_id: NodeId = f.parse()?;
            let node = f.opt_text()?.unwrap_or_default().into_owned();
            let gpus: u32 = f.parse()?;
            f.end()?;
            let list = out.entry(holder).or_default();
            let at = list.partition_point(|p| *p.node < *node);
            list.insert(
                at,
                PlacedNode {
                    node_id,
                    node: node.into(),
                    gpus: (0..gpus).collect(),
                    mig_start: None,
                    cpu_milli: None,
                    memory_mib: None,
                },
            );
        }
    }
    Ok(())
}

/// Groups the records of [`HELD_NODES`] into each holder's placement: nodes ordered by name,
/// each node's GPUs by index.
fn group_placements(rows: &[AnyRow]) -> Result<HashMap<String, Vec<PlacedNode>>> {
    let mut out: HashMap<String, Vec<PlacedNode>> = HashMap::new();
    for r in rows {
        for rec in packed::records(r)? {
            let mut f = Fields::new(rec, HELD_NODES);
            let holder = f.text()?.to_string();
            let node_id: NodeId = f.parse()?;
            let node = f.opt_text()?.unwrap_or_default().into_owned();
            let list = f.text()?;
            f.end()?;
            let mut gpus = list
                .split('/')
                .map(|g| g.parse::<u32>())
                .collect::<Result<GpuIndexes, _>>()
                .map_err(|e| StoreError::Corrupt(format!("GPUs of {holder}: {e}")))?;
            gpus.sort_unstable();
            out.entry(holder).or_default().push(PlacedNode {
                node_id,
                node: node.into(),
                gpus,
                mig_start: None,
                cpu_milli: None,
                memory_mib: None,
            });
        }
    }
    for nodes in out.values_mut() {
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
    }
    Ok(out)
}

/// Adds `(instance_id, node_id, name, idx, mig_start)` rows of instance_slices to the
/// placements: a slice or CPU-only instance sits on one node.
fn add_slices(out: &mut HashMap<String, Vec<PlacedNode>>, rows: &[AnyRow]) -> Result<()> {
    for r in rows {
        let idx: Option<i64> = r.try_get("idx")?;
        let gpus = match idx {
            Some(i) => GpuIndexes::from_elem(
                u32::try_from(i).map_err(|_| StoreError::Corrupt("idx".into()))?,
                1,
            ),
            None => GpuIndexes::new(),
        };
        let mig_start = r
            .try_get::<Option<i64>, _>("mig_start")?
            .map(|m| u32::try_from(m).map_err(|_| StoreError::Corrupt("mig_start".into())))
            .transpose()?;
        out.entry(r.try_get("instance_id")?)
            .or_default()
            .push(PlacedNode {
                node_id: id_col(r, "node_id")?,
                node: r.try_get::<String, _>("name")?.into(),
                gpus,
                mig_start,
                cpu_milli: None,
                memory_mib: None,
            });
    }
    Ok(())
}

const SLICE_COLS: &str = "s.instance_id, s.node_id, n.name, s.idx, s.mig_start \
     FROM instance_slices s JOIN nodes n ON n.id = s.node_id";

/// What a placement holds besides whole GPUs, as the store records it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// CPU thousandths of a core held on each node.
    pub cpu_milli: u64,
    /// Memory MiB held on each node.
    pub memory_mib: u64,
    /// For a MIG instance, the first memory slice of its GPU instance.
    pub mig_start: Option<u32>,
}

/// Filters for listing instances.
#[derive(Clone, Debug, Default)]
pub struct InstanceFilter {
    /// Only this tenant's.
    pub tenant_id: Option<TenantId>,
    /// Only in this state.
    pub state: Option<InstanceState>,
}

pub use neocloud_types::{AllocatorNode, AllocatorSite};

impl Store {
    /// Inserts an instance (without placement).
    pub async fn instance_insert(tx: &mut WriteTx, i: &Instance) -> Result<()> {
        Self::instance_insert_held(tx, i, None).await
    }

    /// Inserts a new instance with the CPU and memory its placement holds (a launch placed
    /// at once: one statement instead of an insert and an update). In a transaction that
    /// defers inserts ([`WriteTx::defer_inserts`]) the row waits for the next flush.
    pub async fn instance_insert_held(
        tx: &mut WriteTx,
        i: &Instance,
        held: Option<&Held>,
    ) -> Result<()> {
        let row = NewInstanceRow::of(i, held);
        if let Some(d) = tx.deferred.as_mut() {
            d.instances.push(row);
            return Ok(());
        }
        let sql = format!(
            "INSERT INTO instances ({INSTANCE_COLS}) VALUES {}",
            crate::tenancy::placeholders(1, NewInstanceRow::COLS, tx.numbered)
        );
        row.bind(sqlx::query(&sql)).execute(tx.conn()).await?;
        Ok(())
    }

    /// Writes instance rows held back by [`WriteTx::defer_inserts`], one multi-row
    /// statement per 64 rows.
    pub(crate) async fn instance_insert_rows(
        tx: &mut WriteTx,
        rows: &[NewInstanceRow],
    ) -> Result<()> {
        for chunk in rows.chunks(crate::tenancy::ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO instances ({INSTANCE_COLS}) VALUES {}",
                crate::tenancy::placeholders(chunk.len(), NewInstanceRow::COLS, tx.numbered)
            );
            let mut q = sqlx::query(&sql);
            for r in chunk {
                q = r.bind(q);
            }
            q.execute(tx.conn()).await?;
        }
        Ok(())
    }

    /// Takes whole GPUs for many instances: `(holder, node, first, last)` ranges of GPU
    /// indexes. Refused (nothing changes) unless every GPU is free and holds no slices.
    /// Whole nodes of a holder that takes several (a gang's) are held by a row per node in
    /// `node_holds`, one statement per holder (on SQLite per 1,000 nodes); other ranges mark each GPU's
    /// `gpus.holder`, many ranges to a statement.
    ///
    /// `gangs` names the holders whose every range is a whole node (a gang's, by its
    /// shape): on PostgreSQL their nodes' GPU counts are not read again.
    pub(crate) async fn instance_hold_ranges(
        tx: &mut WriteTx,
        ranges: &[(String, String, u32, u32)],
        gangs: &std::collections::HashSet<String>,
    ) -> Result<()> {
        type Range = (String, String, u32, u32);
        let mut groups: HashMap<(&str, u32, u32), Vec<&Range>> = HashMap::new();
        for r in ranges {
            groups.entry((r.0.as_str(), r.2, r.3)).or_default().push(r);
        }
        let mut rest = Vec::new();
        for ((holder, lo, hi), members) in groups {
            if lo == 0 && members.len() >= 2 {
                // PostgreSQL takes the nodes as one value ([`Store::hold_nodes`]).
                let per = if tx.numbered { members.len() } else { 1000 };
                for chunk in members.chunks(per) {
                    let nodes: Vec<&str> = chunk.iter().map(|r| r.1.as_str()).collect();
                    let gang = gangs.contains(holder);
                    Self::hold_nodes(tx, holder, hi + 1, &nodes, gang).await?;
                }
            } else {
                rest.extend(members);
            }
        }
        Self::hold_values(tx, &rest).await
    }

    /// All `gpus` GPUs of each of `nodes` for `holder`: a row per node whose GPUs are all
    /// free in `node_holds`; the GPUs of a node with more GPUs than that one by one.
    /// Refused unless every GPU was free.
    ///
    /// On PostgreSQL the nodes go as one value (`a,b,…`, split by the server) and a node
    /// held whole already fails the insert on the key: a thousand bound values and the
    /// speculative insert of `ON CONFLICT` cost a 1,024-node gang more than the rows
    /// themselves (about 4 ms of 8). The failed statement ends the transaction, which the
    /// writer rolls back on any error. SQLite keeps a list of values and skips such a node.
    ///
    /// A `gang`'s nodes are whole by its shape: on PostgreSQL they are not looked up in
    /// `nodes` to compare their GPU count (1,024 index lookups, 2-3 ms of a 1,024-node
    /// gang's 5-8 ms insert here). The database still refuses a node with a GPU held or a
    /// slice, and a node held whole already.
    async fn hold_nodes(
        tx: &mut WriteTx,
        holder: &str,
        gpus: u32,
        nodes: &[&str],
        gang: bool,
    ) -> Result<()> {
        let numbered = tx.numbered;
        let (set, list) = if numbered {
            (
                "= ANY(string_to_array($3, ','))".to_string(),
                nodes.join(","),
            )
        } else {
            (
                format!("IN ({})", vec!["?"; nodes.len()].join(", ")),
                String::new(),
            )
        };
        let (p1, p2) = if numbered { ("$1", "$2") } else { ("?", "?") };
        type Query<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;
        fn bound<'q>(
            sql: &'q str,
            holder: &'q str,
            gpus: u32,
            list: Option<&'q str>,
            nodes: &[&'q str],
        ) -> Query<'q> {
            let q = sqlx::query(sql).bind(holder).bind(i64::from(gpus));
            match list {
                Some(l) => q.bind(l),
                None => nodes.iter().fold(q, |q, node| q.bind(*node)),
            }
        }
        let list = numbered.then_some(list.as_str());
        let on_conflict = if numbered {
            ""
        } else {
            "ON CONFLICT (node_id) DO NOTHING"
        };
        let sql = format!(
            "INSERT INTO node_holds (node_id, holder)
             SELECT n.id, {p1} FROM nodes n
             WHERE n.gpu_count = {p2} AND n.id {set}
               AND NOT EXISTS (SELECT 1 FROM gpus g
                               WHERE g.node_id = n.id AND g.holder IS NOT NULL)
               AND NOT EXISTS (SELECT 1 FROM instance_slices s WHERE s.node_id = n.id)
             {on_conflict}"
        );
        let refused = |done: u64, want: u64| {
            StoreError::Conflict(format!(
                "{done} of {want} GPUs to hold were free (the others are held whole by another \
                 instance, or hold slices)"
            ))
        };
        let want = u64::from(gpus) * nodes.len() as u64;
        let insert = match (list, gang) {
            (Some(list), true) => sqlx::query(
                "INSERT INTO node_holds (node_id, holder)
                 SELECT x.id, $1 FROM unnest(string_to_array($2, ',')) AS x(id)
                 WHERE NOT EXISTS (SELECT 1 FROM gpus g
                                   WHERE g.node_id = x.id AND g.holder IS NOT NULL)
                   AND NOT EXISTS (SELECT 1 FROM instance_slices s WHERE s.node_id = x.id)",
            )
            .bind(holder)
            .bind(list),
            _ => bound(&sql, holder, gpus, list, nodes),
        };
        let whole = match insert.execute(tx.conn()).await {
            Ok(r) => r.rows_affected(),
            Err(e) if crate::is_unique_violation(&e) => return Err(refused(0, want)),
            Err(e) => return Err(e.into()),
        };
        let mut done = whole * u64::from(gpus);
        if done < want {
            // Nodes with more GPUs than that, or GPUs taken: GPU by GPU (a node held whole by
            // another instance, or just now by this one, is left alone).
            let sql = format!(
                "UPDATE gpus SET holder = {p1}
                 WHERE idx < {p2} AND node_id {set} AND holder IS NULL
                   AND NOT EXISTS (SELECT 1 FROM node_holds h WHERE h.node_id = gpus.node_id)
                   AND NOT EXISTS (SELECT 1 FROM instance_slices s
                                   WHERE s.node_id = gpus.node_id AND s.idx = gpus.idx)"
            );
            done += bound(&sql, holder, gpus, list, nodes)
                .execute(tx.conn())
                .await?
                .rows_affected();
        }
        if done != want {
            return Err(refused(done, want));
        }
        Ok(())
    }

    /// Takes the GPUs of `ranges` in statements of 64 ranges each (a list of `VALUES`).
    async fn hold_values(tx: &mut WriteTx, ranges: &[&(String, String, u32, u32)]) -> Result<()> {
        for chunk in ranges.chunks(crate::tenancy::ROWS_PER_STATEMENT) {
            let mut values = String::new();
            for r in 0..chunk.len() {
                let b = r * 4;
                if r > 0 {
                    values.push_str(", ");
                }
                let p = |k: usize| {
                    if tx.numbered {
                        format!("${}", b + k)
                    } else {
                        "?".to_string()
                    }
                };
                values.push_str(&format!(
                    "(CAST({} AS TEXT), CAST({} AS TEXT), CAST({} AS BIGINT), CAST({} AS BIGINT))",
                    p(1),
                    p(2),
                    p(3),
                    p(4)
                ));
            }
            let sql = format!(
                "WITH v (holder, node_id, lo, hi) AS (VALUES {values})
                 UPDATE gpus SET holder = v.holder FROM v
                 WHERE gpus.node_id = v.node_id AND gpus.idx >= v.lo AND gpus.idx <= v.hi
                   AND gpus.holder IS NULL
                   AND NOT EXISTS (SELECT 1 FROM node_holds h WHERE h.node_id = gpus.node_id)
                   AND NOT EXISTS (SELECT 1 FROM instance_slices s
                                   WHERE s.node_id = gpus.node_id AND s.idx = gpus.idx)"
            );
            let mut q = sqlx::query(&sql);
            let mut want = 0u64;
            for (holder, node, lo, hi) in chunk {
                want += u64::from(hi - lo + 1);
                q = q
                    .bind(holder)
                    .bind(node)
                    .bind(i64::from(*lo))
                    .bind(i64::from(*hi));
            }
            let done = q.execute(tx.conn()).await?.rows_affected();
            if done != want {
                return Err(StoreError::Conflict(format!(
                    "{} of {want} GPUs to hold were free (the others are held whole by another \
                     instance, or hold slices)",
                    done
                )));
            }
        }
        Ok(())
    }

    /// Records what a placement holds: whole GPUs in `gpus.holder` (see
    /// [`Store::instance_hold_gpus`]), a share, MIG or CPU-only instance as its one row of
    /// `instance_slices`, and the CPU and memory held. A slice is refused on a GPU held whole,
    /// and whole GPUs on a GPU with slices, whatever the allocator decided.
    pub async fn instance_hold(
        tx: &mut WriteTx,
        i: &Instance,
        gpus: &[(NodeId, GpuIndexes)],
        held: Held,
    ) -> Result<()> {
        Self::instance_hold_placed(tx, i, gpus, &held).await?;
        sqlx::query("UPDATE instances SET held_cpu_milli = $1, held_memory_mib = $2 WHERE id = $3")
            .bind(opt_i64(Some(held.cpu_milli)))
            .bind(opt_i64(Some(held.memory_mib)))
            .bind(i.id.to_string())
            .execute(tx.conn())
            .await?;
        Ok(())
    }

    /// As [`Store::instance_hold`], for an instance whose row already carries the CPU and
    /// memory held ([`Store::instance_insert_held`]).
    pub async fn instance_hold_placed(
        tx: &mut WriteTx,
        i: &Instance,
        gpus: &[(NodeId, GpuIndexes)],
        held: &Held,
    ) -> Result<()> {
        if i.shape.is_slice() {
            // Its slice row names the instance: rows held back go first.
            tx.flush_deferred_rows().await?;
            let [(node, idxs)] = gpus else {
                return Err(StoreError::Conflict(format!(
                    "a {} instance sits on one node, not {}",
                    i.shape.describe(),
                    gpus.len()
                )));
            };
            let idx = idxs.first().copied();
            if let Some(g) = idx {
                let whole = sqlx::query(
                    "SELECT holder FROM gpus WHERE node_id = $1 AND idx = $2 AND holder IS NOT NULL
                     UNION ALL SELECT holder FROM node_holds WHERE node_id = $3",
                )
                .bind(node.to_string())
                .bind(i64::from(g))
                .bind(node.to_string())
                .fetch_optional(tx.conn())
                .await?;
                if whole.is_some() {
                    return Err(StoreError::Conflict(format!(
                        "GPU {g} of node {node} is held whole by another instance"
                    )));
                }
            }
            sqlx::query(
                "INSERT INTO instance_slices (instance_id, node_id, idx, mig_start)
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(i.id.to_string())
            .bind(node.to_string())
            .bind(idx.map(i64::from))
            .bind(held.mig_start.map(i64::from))
            .execute(tx.conn())
            .await?;
        } else {
            let contiguous =
                gpus.iter()
                    .all(|(_, idxs)| match (idxs.iter().min(), idxs.iter().max()) {
                        (Some(&lo), Some(&hi)) => {
                            usize::try_from(hi - lo + 1).ok() == Some(idxs.len())
                        }
                        _ => true,
                    });
            if contiguous && let Some(d) = tx.deferred.as_mut() {
                for (node, idxs) in gpus {
                    if let (Some(&lo), Some(&hi)) = (idxs.iter().min(), idxs.iter().max()) {
                        d.holds.push((i.id.to_string(), node.to_string(), lo, hi));
                    }
                }
                if matches!(i.shape, neocloud_types::Shape::Nodes { .. }) {
                    d.gangs.insert(i.id.to_string());
                }
                return Ok(());
            }
            Self::instance_hold_gpus(tx, i.id, gpus).await?;
        }
        Ok(())
    }

    /// Writes an instance's state, reason, site, times and the model it was placed on.
    pub async fn instance_update(tx: &mut WriteTx, i: &Instance) -> Result<()> {
        let t = |t: Option<Timestamp>| t.map(|t| t.micros());
        sqlx::query(
            "UPDATE instances SET state = $1, reason = $2, site_id = $3, started_at = $4,
             ended_at = $5, preempt_at = $6, wait_until = $7, access = $8, ends_as = $9,
             gpu_model = $10
             WHERE id = $11",
        )
        .bind(i.state.as_str())
        .bind(i.reason.clone())
        .bind(i.site_id.map(|s| s.to_string()))
        .bind(t(i.started_at))
        .bind(t(i.ended_at))
        .bind(t(i.preempt_at))
        .bind(t(i.wait_until))
        .bind(access_json(i))
        .bind(i.ends_as.map(|s| s.as_str()))
        .bind(&i.gpu_model)
        .bind(i.id.to_string())
        .execute(tx.conn())
        .await?;
        Ok(())
    }

    /// Marks GPUs as held by `id`. Refuses (and the caller rolls back) if any of them is
    /// held already: the database enforces invariant 1 on its own, whatever the allocator
    /// decided.
    pub async fn instance_hold_gpus(
        tx: &mut WriteTx,
        id: InstanceId,
        gpus: &[(NodeId, GpuIndexes)],
    ) -> Result<()> {
        let holder = id.to_string();
        for (node, idxs) in gpus {
            let (Some(&lo), Some(&hi)) = (idxs.iter().min(), idxs.iter().max()) else {
                continue;
            };
            let contiguous = usize::try_from(hi - lo + 1).ok() == Some(idxs.len());
            let done = if contiguous {
                sqlx::query(
                    "UPDATE gpus SET holder = $1
                     WHERE node_id = $2 AND idx >= $3 AND idx <= $4 AND holder IS NULL
                       AND NOT EXISTS (SELECT 1 FROM node_holds h WHERE h.node_id = gpus.node_id)
                       AND NOT EXISTS (SELECT 1 FROM instance_slices s
                                       WHERE s.node_id = gpus.node_id AND s.idx = gpus.idx)",
                )
                .bind(&holder)
                .bind(node.to_string())
                .bind(i64::from(lo))
                .bind(i64::from(hi))
                .execute(tx.conn())
                .await?
                .rows_affected()
            } else {
                let mut n = 0;
                for idx in idxs {
                    n += sqlx::query(
                        "UPDATE gpus SET holder = $1 WHERE node_id = $2 AND idx = $3 AND holder IS NULL
                           AND NOT EXISTS (SELECT 1 FROM node_holds h WHERE h.node_id = gpus.node_id)
                           AND NOT EXISTS (SELECT 1 FROM instance_slices s
                                           WHERE s.node_id = gpus.node_id AND s.idx = gpus.idx)",
                    )
                    .bind(&holder)
                    .bind(node.to_string())
                    .bind(i64::from(*idx))
                    .execute(tx.conn())
                    .await?
                    .rows_affected();
                }
                n
            };
            if usize::try_from(done).ok() != Some(idxs.len()) {
                return Err(StoreError::Conflict(format!(
                    "GPUs {idxs:?} of node {node} are not all free (held whole by another instance, or holding slices)"
                )));
            }
        }
        Ok(())
    }

    /// Writes a gang's size after one of its nodes failed: its GPU count and, for a gang
    /// that shrank, its node count.
    pub async fn instance_set_size(tx: &mut WriteTx, i: &Instance) -> Result<()> {
        let count = match i.shape {
            Shape::Nodes { count, .. } => Some(i64::from(count)),
            _ => None,
        };
        sqlx::query(
            "UPDATE instances SET gpu_count = $1, shape_count = $2, gpu_milli = $3 WHERE id = $4",
        )
        .bind(i64::from(i.gpu_count))
        .bind(count)
        .bind(opt_i64(Some(i.shape.gpu_milli(i.gpu_count))))
        .bind(i.id.to_string())
        .execute(tx.conn())
        .await?;
        Ok(())
    }

    /// Frees the GPUs `id` holds on one node. Returns the rows freed (GPUs held one by one,
    /// plus one for a node held whole).
    pub async fn instance_release_node(
        tx: &mut WriteTx,
        id: InstanceId,
        node: NodeId,
    ) -> Result<u64> {
        let n = sqlx::query("UPDATE gpus SET holder = NULL WHERE holder = $1 AND node_id = $2")
            .bind(id.to_string())
            .bind(node.to_string())
            .execute(tx.conn())
            .await?
            .rows_affected();
        let whole = sqlx::query("DELETE FROM node_holds WHERE holder = $1 AND node_id = $2")
            .bind(id.to_string())
            .bind(node.to_string())
            .execute(tx.conn())
            .await?
            .rows_affected();
        Ok(n + whole)
    }

    /// Frees every GPU (and slice) held by `id`. Returns the rows freed (GPUs held one by
    /// one, nodes held whole, slices).
    pub async fn instance_release_gpus(tx: &mut WriteTx, id: InstanceId) -> Result<u64> {
        let whole = sqlx::query("UPDATE gpus SET holder = NULL WHERE holder = $1")
            .bind(id.to_string())
            .execute(tx.conn())
            .await?
            .rows_affected();
        let nodes = sqlx::query("DELETE FROM node_holds WHERE holder = $1")
            .bind(id.to_string())
            .execute(tx.conn())
            .await?
            .rows_affected();
        let slices = sqlx::query("DELETE FROM instance_slices WHERE instance_id = $1")
            .bind(id.to_string())
            .execute(tx.conn())
            .await?
            .rows_affected();
        Ok(whole + nodes + slices)
    }

    async fn placements_of(&self, ids: &[String]) -> Result<HashMap<String, Vec<PlacedNode>>> {
        let mut out: HashMap<String, Vec<PlacedNode>> = HashMap::new();
        for chunk in ids.chunks(500) {
            if chunk.is_empty() {
                continue;
            }
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            // A record per node rather than a row per GPU: a 1,024-node gang is 1,024
            // records in one value, not 8,192 rows through the driver (about 20 ms).
            let sql = packed::one_batch_sql(
                &packed::record_sql(HELD_NODES),
                &format!(
                    "FROM gpus g JOIN nodes n ON n.id = g.node_id
                     WHERE g.holder IN ({}) GROUP BY g.holder, g.node_id, n.name",
                    marks.join(", ")
                ),
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id.as_str());
            }
            let rows = q.fetch_all(&self.pool).await?;
            out.extend(group_placements(&rows)?);
            // Nodes held whole: their GPUs are 0 to the node's count.
            let sql = packed::one_batch_sql(
                &packed::record_sql(WHOLE_NODES),
                &format!(
                    "FROM node_holds h JOIN nodes n ON n.id = h.node_id WHERE h.holder IN ({})",
                    marks.join(", ")
                ),
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id.as_str());
            }
            add_whole_nodes(&mut out, &q.fetch_all(&self.pool).await?)?;
            let sql = format!(
                "SELECT {SLICE_COLS} WHERE s.instance_id IN ({})",
                marks.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id.as_str());
            }
            add_slices(&mut out, &q.fetch_all(&self.pool).await?)?;
        }
        Ok(out)
    }

    /// Reads an instance with its placement.
    pub async fn instance_get(&self, id: InstanceId) -> Result<Instance> {
        let row = self.instance_row(id).await?;
        let id = row.inst.id.to_string();
        let placement = self
            .placements_of(std::slice::from_ref(&id))
            .await?
            .remove(&id);
        Ok(row.with(placement))
    }

    /// Reads an instance without its placement (`placement` is empty): for a caller that
    /// needs its tenant and state only (a 1,024-node gang's placement is 1,024 records).
    pub async fn instance_get_unplaced(&self, id: InstanceId) -> Result<Instance> {
        Ok(self.instance_row(id).await?.with(None))
    }

    async fn instance_row(&self, id: InstanceId) -> Result<InstanceRow> {
        let row = sqlx::query(&format!(
            "SELECT {} FROM instances WHERE id = $1",
            instance_select()
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Err(StoreError::NotFound {
                kind: "instance",
                id: id.to_string(),
            });
        };
        InstanceRow::read(&row)
    }

    /// Lists instances, newest first, with placements.
    pub async fn instance_list(
        &self,
        filter: &InstanceFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Instance>> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM instances
             WHERE ($1 = '' OR tenant_id = $1) AND ($2 = '' OR state = $2) AND ($3 = '' OR id < $3)
             ORDER BY id DESC LIMIT $4",
            instance_select()
        ))
        .bind(filter.tenant_id.map(|t| t.to_string()).unwrap_or_default())
        .bind(filter.state.map(|s| s.as_str()).unwrap_or(""))
        .bind(cursor.unwrap_or(""))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let mut items = rows
            .iter()
            .map(InstanceRow::read)
            .collect::<Result<Vec<_>>>()?;
        let page = paginate(&mut items, limit, |i| i.inst.id.to_string());
        let ids: Vec<String> = page
            .items
            .iter()
            .filter(|i| i.inst.state.holds_gpus())
            .map(|i| i.inst.id.to_string())
            .collect();
        let mut placements = self.placements_of(&ids).await?;
        Ok(Page {
            items: page
                .items
                .into_iter()
                .map(|i| {
                    let p = placements.remove(&i.inst.id.to_string());
                    i.with(p)
                })
                .collect(),
            next_cursor: page.next_cursor,
        })
    }

    /// Every instance that is not final (pending, running, terminating, preempting), oldest
    /// first, with placements: what the allocator and the queue are rebuilt from.
    pub async fn instance_list_live(&self) -> Result<Vec<Instance>> {
        // A restart reads every live instance and every held GPU: as batches of records
        // ([`packed`]), a few hundred rows in all.
        static SQL: LazyLock<[String; 4]> = LazyLock::new(|| {
            [
                packed::batched_sql(
                    &packed::record_sql(INSTANCE_READ),
                    "FROM instances WHERE state IN ('pending', 'provisioning', 'running', \
                     'terminating', 'preempting', 'stopping')",
                    "id",
                ),
                packed::batched_sql(
                    &packed::record_sql(HELD),
                    "FROM (SELECT holder, string_agg(CAST(node_id AS TEXT) || ':' || \
                     CAST(idx AS TEXT), '/') AS gpus FROM \
                     (SELECT holder, node_id, idx FROM gpus WHERE holder IS NOT NULL \
                      UNION ALL SELECT w.holder, g.node_id, g.idx \
                      FROM node_holds w JOIN gpus g ON g.node_id = w.node_id) u \
                     GROUP BY holder) h",
                    "h.holder",
                ),
                packed::batched_sql(
                    &packed::record_sql(SLICES),
                    "FROM instance_slices",
                    "instance_id",
                ),
                packed::batched_sql(&packed::record_sql(NAMES), "FROM nodes", "id"),
            ]
        });
        // One snapshot, so that an instance and the GPUs it holds are read as of one
        // moment (a launch or a release committed between two reads would otherwise leave a
        // running instance without its GPUs). Each result is decoded on a thread of its
        // own as soon as it is in, beside the reads after it.
        let mut tx = self.begin_snapshot().await?;
        let rows = sqlx::query(&SQL[0]).fetch_all(&mut *tx).await?;
        let instances = off_thread(move || {
            let mut items = Vec::new();
            for r in &rows {
                for rec in packed::records(r)? {
                    items.push(InstanceRow::parse(Fields::new(rec, INSTANCE_READ))?);
                }
            }
            items.sort_unstable_by_key(|i| i.inst.id);
            Ok(items)
        });
        let placements = async {
            let held = sqlx::query(&SQL[1]).fetch_all(&mut *tx).await?;
            let slices = sqlx::query(&SQL[2]).fetch_all(&mut *tx).await?;
            let names = sqlx::query(&SQL[3]).fetch_all(&mut *tx).await?;
            off_thread(move || live_placements(&held, &slices, &names)).await
        };
        let (items, mut by_holder) = tokio::try_join!(instances, placements)?;
        tx.commit().await?;
        Ok(items
            .into_iter()
            .map(|i| {
                let p = by_holder.remove(&i.inst.id);
                i.with(p)
            })
            .collect())
    }

    /// Preempting instances whose notice has run out at `now`.
    pub async fn instance_list_preemptions_due(&self, now: Timestamp) -> Result<Vec<Instance>> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM instances
             WHERE state = 'preempting' AND preempt_at <= $1 ORDER BY id",
            instance_select()
        ))
        .bind(now.micros())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| InstanceRow::read(r).map(|i| i.inst))
            .collect()
    }

    /// Thousandths of a GPU held per (tenant, model, class) by live instances, for quota
    /// checks: 1000 per whole GPU, a slice its share (see [`Shape::gpu_milli`]).
    pub async fn instance_usage(&self, tenant: TenantId) -> Result<Vec<(String, Class, i64)>> {
        let rows = sqlx::query(
            "SELECT gpu_model, class,
                    CAST(SUM(COALESCE(gpu_milli, gpu_count * 1000)) AS BIGINT) AS gpus FROM instances
             WHERE tenant_id = $1 AND state IN ('pending', 'provisioning', 'running', 'terminating', 'preempting', 'stopping')
             GROUP BY gpu_model, class",
        )
        .bind(tenant.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("gpu_model")?,
                    enum_col::<Class>(r, "class")?,
                    r.try_get("gpus")?,
                ))
            })
            .collect()
    }

    /// Sets (or, with `max_gpus` none, removes) a quota.
    pub async fn quota_put(
        tx: &mut WriteTx,
        tenant: TenantId,
        model: &str,
        class: Class,
        max_gpus: Option<u32>,
    ) -> Result<()> {
        sqlx::query("DELETE FROM quotas WHERE tenant_id = $1 AND gpu_model = $2 AND class = $3")
            .bind(tenant.to_string())
            .bind(model)
            .bind(class.as_str())
            .execute(tx.conn())
            .await?;
        if let Some(max) = max_gpus {
            sqlx::query(
                "INSERT INTO quotas (tenant_id, gpu_model, class, max_gpus) VALUES ($1, $2, $3, $4)",
            )
            .bind(tenant.to_string())
            .bind(model)
            .bind(class.as_str())
            .bind(i64::from(max))
            .execute(tx.conn())
            .await?;
        }
        Ok(())
    }

    /// Lists quotas (of one tenant, or all).
    pub async fn quota_list(&self, tenant: Option<TenantId>) -> Result<Vec<Quota>> {
        let q = sqlx::query(
            "SELECT tenant_id, gpu_model, class, max_gpus FROM quotas
             WHERE ($1 = '' OR tenant_id = $1) ORDER BY tenant_id, gpu_model, class",
        )
        .bind(tenant.map(|t| t.to_string()).unwrap_or_default());
        let rows = self.fetch_all_viewed(q).await?;
        rows.iter()
            .map(|r| {
                Ok(Quota {
                    tenant_id: id_col(r, "tenant_id")?,
                    gpu_model: r.try_get("gpu_model")?,
                    class: enum_col::<Class>(r, "class")?,
                    max_gpus: u32_col(r, "max_gpus")?,
                })
            })
            .collect()
    }

    /// Sites and nodes as the allocator needs them.
    pub async fn allocator_fleet(&self) -> Result<(Vec<AllocatorSite>, Vec<AllocatorNode>)> {
        // Every node, as batches of records ([`packed`]): a restart reads a few hundred
        // rows, not one per node.
        const NODES: &[Col] = &[
            Col::Plain("n.id"),
            Col::Text("n.name"),
            Col::Plain("n.site_id"),
            Col::Plain("n.block_id"),
            Col::Text("n.gpu_model"),
            Col::Plain("n.gpu_count"),
            Col::Plain("n.idle_watts"),
            Col::Plain("n.peak_watts"),
            Col::Plain("n.state"),
            Col::Plain("n.pool_contract_id"),
            Col::Plain("n.cpu_cores"),
            Col::Plain("n.ram_gib"),
            Col::Plain("COALESCE(m.memory_gib, 0)"),
        ];
        static SQL: LazyLock<String> = LazyLock::new(|| {
            packed::batched_sql(
                &packed::record_sql(NODES),
                "FROM nodes n LEFT JOIN gpu_models m ON m.name = n.gpu_model",
                "n.id",
            )
        });
        // One snapshot, so that every node's blocks and site are read with it.
        let mut tx = self.begin_snapshot().await?;
        let sites = sqlx::query(
            "SELECT id, power_budget_watts, power_cap_watts, pue_milli FROM sites ORDER BY id",
        )
        .fetch_all(&mut *tx)
        .await?;
        let blocks = sqlx::query("SELECT id, kind, parent_id FROM blocks")
            .fetch_all(&mut *tx)
            .await?;
        let unhealthy = sqlx::query("SELECT node_id, idx FROM gpus WHERE health <> 'healthy'")
            .fetch_all(&mut *tx)
            .await?;
        let rows = sqlx::query(&SQL).fetch_all(&mut *tx).await?;
        tx.commit().await?;
        let sites = sites
            .iter()
            .map(|r| {
                Ok(AllocatorSite {
                    id: id_col(r, "id")?,
                    power_budget_watts: r
                        .try_get::<Option<i64>, _>("power_cap_watts")?
                        .unwrap_or(r.try_get("power_budget_watts")?),
                    pue_milli: u32_col(r, "pue_milli")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut by_id: HashMap<String, (BlockKind, BlockId, Option<String>)> = HashMap::new();
        for r in &blocks {
            let id: String = r.try_get("id")?;
            let block = (
                enum_col::<BlockKind>(r, "kind")?,
                id_col(r, "id")?,
                r.try_get("parent_id")?,
            );
            by_id.insert(id, block);
        }
        let blocks = by_id;
        let mut by_node: HashMap<String, Vec<u32>> = HashMap::new();
        for r in &unhealthy {
            by_node
                .entry(r.try_get("node_id")?)
                .or_default()
                .push(u32_col(r, "idx")?);
        }
        let mut unhealthy = by_node;
        // Decoded on a thread of its own (see [`off_thread`]).
        let nodes = off_thread(move || {
            // Each block's chain of blocks from the site down, worked out once per block.
            let mut chains: HashMap<&str, Vec<(BlockKind, BlockId)>> = HashMap::new();
            let mut nodes = Vec::new();
            for r in &rows {
                for rec in packed::records(r)? {
                    let mut f = Fields::new(rec, NODES);
                    let id = f.text()?;
                    let name = f.owned_text()?;
                    let site_id = f.parse()?;
                    let block_id = f.opt()?;
                    let gpu_model = f.owned_text()?;
                    let gpus = f.parse()?;
                    let idle_watts = f.parse()?;
                    let peak_watts = f.parse()?;
                    let state = f.parse::<NodeState>()?;
                    let pool = f.opt_parse()?;
                    let cpu_cores = f.parse()?;
                    let ram_gib = f.parse()?;
                    let gpu_memory_gib = f.parse()?;
                    f.end()?;
                    let chain = match block_id {
                        None => Vec::new(),
                        Some(b) => chains
                            .entry(b)
                            .or_insert_with(|| {
                                let mut chain = Vec::new();
                                let mut cur = Some(b);
                                while let Some((kind, bid, parent)) =
                                    cur.and_then(|b| blocks.get(b))
                                {
                                    chain.push((*kind, *bid));
                                    cur = parent.as_deref();
                                }
                                chain.reverse();
                                chain
                            })
                            .clone(),
                    };
                    nodes.push(AllocatorNode {
                        id: id.parse().map_err(|e: neocloud_types::IdParseError| {
                            StoreError::Corrupt(e.to_string())
                        })?,
                        name,
                        site_id,
                        blocks: chain,
                        gpu_model,
                        gpus,
                        idle_watts,
                        peak_watts,
                        state,
                        pool,
                        unhealthy_gpus: unhealthy.remove(id).unwrap_or_default(),
                        cpu_cores,
                        ram_gib,
                        gpu_memory_gib,
                    });
                }
            }
            // In the order of their ids, as the allocator has always been given them.
            nodes.sort_unstable_by_key(|n: &AllocatorNode| n.id);
            Ok(nodes)
        })
        .await?;
        Ok((sites, nodes))
    }

    /// Pins a node to a contract's reserved pool (or unpins it).
    pub async fn node_set_pool(
        tx: &mut WriteTx,
        node: NodeId,
        pool: Option<ContractId>,
    ) -> Result<()> {
        sqlx::query("UPDATE nodes SET pool_contract_id = $1 WHERE id = $2")
            .bind(pool.map(|p| p.to_string()))
            .bind(node.to_string())
            .execute(tx.conn())
            .await?;
        Ok(())
    }
}
