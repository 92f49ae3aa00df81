//! Reading the node list and the task list of the Alibaba GPU cluster trace v2023
//! (`openb_node_list_gpu_node.csv`, `openb_pod_list_*.csv`).
//!
//! Columns are found by their header, so extra columns and another order are fine. A row
//! that cannot be read is refused with its file, its line (1-based, the header is line 1)
//! and what is wrong: a task list that reads wrong must stop a measurement, not turn into
//! tasks that are silently refused.
//!
//! `gpu_spec` lists the GPU models a task accepts (`A|B`); empty or `nan` (how the trace's
//! tooling writes a missing value) means any model. A model the node list does not have is
//! refused: such a task could never be placed.

/// One node of the node list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub gpus: u32,
    pub model: String,
}

/// One task of the task list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    pub cpu_milli: u64,
    pub memory_mib: u64,
    /// GPUs asked for: 0 (CPU only), or 1, 2, 4 or 8.
    pub gpus: u32,
    /// Thousandths of each GPU: below 1000 only for one GPU (a share).
    pub gpu_milli: u32,
    /// The GPU models the task accepts; empty: any.
    pub models: Vec<String>,
}

impl Task {
    /// GPU thousandths the task asks for.
    pub fn gpu_demand(&self) -> u64 {
        u64::from(self.gpus) * u64::from(self.gpu_milli)
    }
}

/// GPU counts a task may ask for: the sizes of a shape inside one node.
const TASK_GPUS: [u32; 5] = [0, 1, 2, 4, 8];

/// The rows of a CSV text after its header, as (line number, fields), with a lookup of
/// the named columns. Errors name `file`.
struct Csv<'a> {
    file: &'a str,
    columns: Vec<usize>,
    width: usize,
    rows: Vec<(usize, Vec<&'a str>)>,
}

impl<'a> Csv<'a> {
    fn parse(file: &'a str, text: &'a str, wanted: &[&str]) -> Result<Csv<'a>, String> {
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
        let header: Vec<&str> = match lines.next() {
            Some((_, h)) => h.split(',').map(str::trim).collect(),
            None => return Err(format!("{file}: the file is empty")),
        };
        let mut columns = Vec::with_capacity(wanted.len());
        for name in wanted {
            let at = header.iter().position(|h| h == name).ok_or_else(|| {
                format!(
                    "{file}, line 1: no column '{name}' in the header (expected {})",
                    wanted.join(",")
                )
            })?;
            columns.push(at);
        }
        let rows = lines
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(n, l)| (n, l.split(',').map(str::trim).collect()))
            .collect();
        Ok(Csv {
            file,
            columns,
            width: header.len(),
            rows,
        })
    }

    /// The wanted fields of every row, in the order asked for, with a row's line.
    fn records(&self) -> impl Iterator<Item = Result<Record<'_>, String>> {
        self.rows.iter().map(|(line, fields)| {
            if fields.len() != self.width {
                return Err(format!(
                    "{}, line {line}: {} fields where the header has {}",
                    self.file,
                    fields.len(),
                    self.width
                ));
            }
            Ok(Record {
                file: self.file,
                line: *line,
                values: self.columns.iter().map(|&c| fields[c]).collect(),
            })
        })
    }
}

struct Record<'a> {
    file: &'a str,
    line: usize,
    values: Vec<&'a str>,
}

impl Record<'_> {
    fn error(&self, what: &str) -> String {
        format!("{}, line {}: {what}", self.file, self.line)
    }

    /// Column `i` (of the wanted ones), named `name`, as a non-negative integer.
    fn count(&self, i: usize, name: &str) -> Result<u64, String> {
        let v = self.values[i];
        v.parse::<u64>()
            .map_err(|_| self.error(&format!("{name} '{v}' is not a non-negative integer")))
    }
}

/// Reads the node list (columns `cpu_milli, memory_mib, gpu, model`).
pub fn read_nodes(file: &str, text: &str) -> Result<Vec<Node>, String> {
    let csv = Csv::parse(file, text, &["cpu_milli", "memory_mib", "gpu", "model"])?;
    let mut nodes = Vec::new();
    for r in csv.records() {
        let r = r?;
        let gpus = r.count(2, "gpu")?;
        let gpus = u32::try_from(gpus)
            .ok()
            .filter(|g| (1..=64).contains(g))
            .ok_or_else(|| r.error(&format!("gpu {gpus}: a GPU node has 1 to 64 GPUs")))?;
        let model = r.values[3];
        if model.is_empty() || model.eq_ignore_ascii_case("nan") || model.contains('|') {
            return Err(r.error(&format!("model '{model}' is not one GPU model")));
        }
        nodes.push(Node {
            cpu_milli: r.count(0, "cpu_milli")?,
            memory_mib: r.count(1, "memory_mib")?,
            gpus,
            model: model.to_string(),
        });
    }
    if nodes.is_empty() {
        return Err(format!("{file}: no node"));
    }
    Ok(nodes)
}

/// Reads a task list (columns `cpu_milli, memory_mib, num_gpu, gpu_milli, gpu_spec`);
/// `models` are the node list's GPU models.
pub fn read_tasks(file: &str, text: &str, models: &[&str]) -> Result<Vec<Task>, String> {
    let csv = Csv::parse(
        file,
        text,
        &[
            "cpu_milli",
            "memory_mib",
            "num_gpu",
            "gpu_milli",
            "gpu_spec",
        ],
    )?;
    let mut tasks = Vec::new();
    for r in csv.records() {
        let r = r?;
        let cpu_milli = r.count(0, "cpu_milli")?;
        let memory_mib = r.count(1, "memory_mib")?;
        let gpus = r.count(2, "num_gpu")?;
        let gpus = u32::try_from(gpus)
            .ok()
            .filter(|g| TASK_GPUS.contains(g))
            .ok_or_else(|| r.error(&format!("num_gpu {gpus} is not one of 0, 1, 2, 4, 8")))?;
        let milli = r.count(3, "gpu_milli")?;
        let gpu_milli = u32::try_from(milli)
            .ok()
            .filter(|&m| m <= 1000)
            .ok_or_else(|| r.error(&format!("gpu_milli {milli} is above 1000")))?;
        match (gpus, gpu_milli) {
            (0, 0) => {}
            (0, m) => return Err(r.error(&format!("gpu_milli {m} without a GPU (num_gpu 0)"))),
            (_, 0) => return Err(r.error(&format!("num_gpu {gpus} with gpu_milli 0"))),
            (1, _) | (_, 1000) => {}
            (g, m) => {
                return Err(r.error(&format!(
                    "num_gpu {g} with gpu_milli {m}: only a task of one GPU takes part of it"
                )));
            }
        }
        if gpus == 0 && cpu_milli == 0 {
            return Err(r.error("a task without a GPU asks for no CPU (cpu_milli 0)"));
        }
        let spec = r.values[4];
        let models = if spec.is_empty() || spec.eq_ignore_ascii_case("nan") {
            Vec::new()
        } else {
            let mut list = Vec::new();
            for m in spec.split('|').map(str::trim) {
                if m.is_empty() {
                    return Err(r.error(&format!("gpu_spec '{spec}' has an empty model")));
                }
                if !models.contains(&m) {
                    return Err(r.error(&format!(
                        "gpu_spec '{spec}': no node has GPU model '{m}' (the node list has {})",
                        models.join(", ")
                    )));
                }
                if !list.iter().any(|x: &String| x == m) {
                    list.push(m.to_string());
                }
            }
            list
        };
        tasks.push(Task {
            cpu_milli,
            memory_mib,
            gpus,
            gpu_milli,
            models,
        });
    }
    if tasks.is_empty() {
        return Err(format!("{file}: no task"));
    }
    Ok(tasks)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "sn,cpu_milli,memory_mib,gpu,model\n\
                         n0,64000,262144,2,P100\n\
                         n1,96000,393216,8,G2\n";
    const HEAD: &str = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos\n";

    fn tasks(rows: &str) -> Result<Vec<Task>, String> {
        read_tasks("tasks.csv", &format!("{HEAD}{rows}"), &["P100", "G2"])
    }

    #[test]
    fn nodes_read() {
        let n = read_nodes("nodes.csv", NODES).unwrap();
        assert_eq!(n.len(), 2);
        assert_eq!(
            n[1],
            Node {
                cpu_milli: 96000,
                memory_mib: 393_216,
                gpus: 8,
                model: "G2".into()
            }
        );
    }

    #[test]
    fn empty_and_nan_gpu_spec_mean_any_model() {
        let t = tasks(
            "t0,1000,1024,1,500,,LS\nt1,1000,1024,1,1000,nan,LS\nt2,1000,1024,2,1000,NaN,BE\n",
        )
        .unwrap();
        assert!(t.iter().all(|t| t.models.is_empty()));
        assert_eq!(t[0].gpu_demand(), 500);
        assert_eq!(t[2].gpu_demand(), 2000);
    }

    #[test]
    fn gpu_spec_lists_models() {
        let t = tasks("t0,1000,1024,1,1000,G2|P100|G2,LS\n").unwrap();
        assert_eq!(t[0].models, vec!["G2".to_string(), "P100".to_string()]);
    }

    #[test]
    fn malformed_rows_name_file_line_and_fault() {
        let cases = [
            (
                "t,1000,1024,1,1000,V100,LS\n",
                "no node has GPU model 'V100'",
            ),
            ("t,1000,1024,1,1000,G2||P100,LS\n", "has an empty model"),
            (
                "t,x,1024,1,1000,,LS\n",
                "cpu_milli 'x' is not a non-negative integer",
            ),
            ("t,1000,-5,1,1000,,LS\n", "memory_mib '-5'"),
            ("t,1000,1024,3,1000,,LS\n", "num_gpu 3 is not one of"),
            ("t,1000,1024,1,1500,,LS\n", "gpu_milli 1500 is above 1000"),
            ("t,1000,1024,2,500,,LS\n", "only a task of one GPU"),
            ("t,1000,1024,0,500,,LS\n", "without a GPU"),
            ("t,1000,1024,1,0,,LS\n", "with gpu_milli 0"),
            ("t,0,1024,0,0,,LS\n", "asks for no CPU"),
            (
                "t,1000,1024,1,1000,,LS,extra\n",
                "8 fields where the header has 7",
            ),
            ("t,1000,1024,1,1000\n", "5 fields where the header has 7"),
        ];
        for (row, want) in cases {
            // One good row first: the bad one is on line 3.
            let err = tasks(&format!("ok,1000,1024,1,1000,,LS\n{row}")).unwrap_err();
            assert!(err.starts_with("tasks.csv, line 3: "), "{row}: {err}");
            assert!(err.contains(want), "{row}: {err}");
        }
    }

    #[test]
    fn missing_columns_and_empty_files_are_refused() {
        let err = read_tasks("tasks.csv", "name,cpu_milli\nt,1\n", &["G2"]).unwrap_err();
        assert!(err.contains("line 1: no column 'memory_mib'"), "{err}");
        assert!(
            read_tasks("tasks.csv", HEAD, &["G2"])
                .unwrap_err()
                .contains("no task")
        );
        assert!(read_nodes("nodes.csv", "").unwrap_err().contains("empty"));
        let bad = [
            "n,1,1,0,T4",
            "n,1,1,2,",
            "n,1,1,2,nan",
            "n,1,1,65,T4",
            "n,1,x,2,T4",
        ];
        for row in bad {
            let text = format!("sn,cpu_milli,memory_mib,gpu,model\n{row}\n");
            let err = read_nodes("nodes.csv", &text).unwrap_err();
            assert!(err.starts_with("nodes.csv, line 2: "), "{row}: {err}");
        }
    }
}
