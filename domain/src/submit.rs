//! The slurmrestd v0.0.44 job-submit body: validation, and the canonical form Clusterra forwards.
//!
//! Works on JSON values rather than a closed struct so that fields Clusterra does not know are
//! forwarded unchanged (slurmrestd has ~120 job fields). Every mistake from the v0.0.44
//! reference's pitfall list is turned into an error that says how to fix it, and all errors are
//! reported at once.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// A problem with the body, with the path of the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub code: &'static str,
    pub field: String,
    pub message: String,
}

/// Something accepted but worth knowing (a spelling Clusterra fixed, a field it does not know).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    pub field: String,
    pub message: String,
}

/// What a job asks of a node set: the input to scaling and cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobShape {
    /// vCPUs for the whole job (tasks × cpus_per_task).
    pub cpus: u32,
    /// Memory for the whole job in MiB, if the body asked for any.
    pub memory_mib: Option<u64>,
    /// Minimum number of nodes.
    pub nodes: u32,
    /// Time limit in minutes; `None` = the partition's default.
    pub time_limit_minutes: Option<u32>,
    /// GPUs for the whole job, from `tres_per_job`, `tres_per_node` (× nodes) and
    /// `tres_per_task` (× tasks) entries like `gres/gpu:4` or `gres/gpu:a100:2`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gpus: u32,
    /// The job's tasks when Slurm chooses how many nodes they go on (the body names no node
    /// count, no tasks per node, no memory per node and no GPUs): placement may then spread them
    /// from `nodes` up to one task per node, whichever capacity costs least
    /// (`domain::placement`). `None`: exactly `nodes` nodes (jobs recorded before this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<u32>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The most nodes, tasks or CPUs per task any body may name, whatever the cluster allows: far
/// above any cluster's limit, low enough that no product of them overflows.
pub const MAX_COUNT: u64 = 100_000;

/// The longest time limit a job may ask for, in minutes (a year); no limit is
/// `{"infinite": true}`.
pub const MAX_TIME_LIMIT_MINUTES: u64 = 525_600;

/// A validated body in canonical v0.0.44 form.
#[derive(Debug, Clone, PartialEq)]
pub struct CanonicalSubmit {
    /// `{"job": {...}}` with the script inside `job`, wrapped numbers as
    /// `{"set": true, "infinite": false, "number": n}`, environment as `["K=V", ...]`.
    pub body: Value,
    pub warnings: Vec<Warning>,
    pub shape: JobShape,
}

/// Fields Clusterra knows; others are forwarded with a warning (Slurm ignores unknown fields
/// with only a warning of its own, so a typo silently drops a setting).
const KNOWN_JOB_FIELDS: &[&str] = &[
    "account",
    "argv",
    "array",
    "begin_time",
    "burst_buffer",
    "cluster_constraint",
    "clusters",
    "comment",
    "constraints",
    "container",
    "core_specification",
    "cpu_binding",
    "cpu_binding_flags",
    "cpu_frequency",
    "cpus_per_task",
    "cpus_per_tres",
    "crontab",
    "current_working_directory",
    "deadline",
    "delay_boot",
    "dependency",
    "distribution",
    "environment",
    "excluded_nodes",
    "exclusive",
    "extra",
    "flags",
    "group_id",
    "hetjob_group",
    "hold",
    "immediate",
    "job_id",
    "kill_on_node_fail",
    "kill_warning_delay",
    "kill_warning_flags",
    "kill_warning_signal",
    "licenses",
    "mail_type",
    "mail_user",
    "maximum_cpus",
    "maximum_nodes",
    "mcs_label",
    "memory_binding",
    "memory_binding_type",
    "memory_per_cpu",
    "memory_per_node",
    "memory_per_tres",
    "minimum_boards_per_node",
    "minimum_cpus",
    "minimum_cpus_per_node",
    "minimum_nodes",
    "minimum_sockets_per_board",
    "name",
    "network",
    "nice",
    "nodes",
    "ntasks_per_tres",
    "oom_kill_step",
    "open_mode",
    "overcommit",
    "oversubscribe",
    "partition",
    "prefer",
    "priority",
    "qos",
    "reboot",
    "requeue",
    "required_nodes",
    "required_switches",
    "reservation",
    "resv_mpi_ports",
    "rlimits",
    "script",
    "segment_size",
    "selinux_context",
    "shared",
    "site_factor",
    "sockets_per_node",
    "spank_environment",
    "standard_error",
    "standard_input",
    "standard_output",
    "step_id",
    "tasks",
    "tasks_per_board",
    "tasks_per_core",
    "tasks_per_node",
    "tasks_per_socket",
    "temporary_disk_per_node",
    "thread_specification",
    "threads_per_core",
    "time_limit",
    "time_minimum",
    "tres_bind",
    "tres_freq",
    "tres_per_job",
    "tres_per_node",
    "tres_per_socket",
    "tres_per_task",
    "user_id",
    "wait_all_nodes",
    "wckey",
];

/// Fields v0.0.44 wants as `{"set", "infinite", "number"}` objects in a request.
const WRAPPED: &[&str] = &[
    "time_limit",
    "time_minimum",
    "memory_per_node",
    "memory_per_cpu",
    "begin_time",
];

/// Fields v0.0.44 wants as plain integers in a request (they are wrapped in responses).
const PLAIN_INTS: &[&str] = &[
    "tasks",
    "cpus_per_task",
    "minimum_nodes",
    "maximum_nodes",
    "tasks_per_node",
];

const STRINGS: &[&str] = &[
    "name",
    "partition",
    "account",
    "qos",
    "current_working_directory",
    "standard_output",
    "standard_error",
    "standard_input",
    "comment",
    "constraints",
    "dependency",
    "array",
    "tres_per_node",
    "tres_per_job",
    "tres_per_task",
];

/// Where a job's stdout goes when its body does not say (`%j` is the job id).
pub const DEFAULT_STDOUT: &str = "/mnt/efs/job_%j.out";

/// The environment Clusterra suggests when a body has none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/bin:/usr/bin:/bin";

struct Check {
    errors: Vec<FieldError>,
    warnings: Vec<Warning>,
}

impl Check {
    fn error(&mut self, code: &'static str, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            code,
            field: field.into(),
            message: message.into(),
        });
    }

    fn warn(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Warning {
            field: field.into(),
            message: message.into(),
        });
    }
}

fn wrapped(n: u64) -> Value {
    json!({"set": true, "infinite": false, "number": n})
}

/// Parses a memory size like `4096`, `"4G"`, `"512M"` into MiB.
fn memory_mib(text: &str) -> Option<u64> {
    let t = text.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = digits.parse().ok()?;
    match unit.to_ascii_uppercase().as_str() {
        "" | "M" | "MB" | "MIB" => Some(n),
        "G" | "GB" | "GIB" => n.checked_mul(1024),
        "T" | "TB" | "TIB" => n.checked_mul(1024 * 1024),
        _ => None,
    }
}

/// Validates a wrapped-number field, returning its canonical form and value (None = infinite).
fn check_wrapped(c: &mut Check, name: &str, value: &Value) -> Option<(Value, Option<u64>)> {
    let field = format!("job.{name}");
    let unit = if name.starts_with("memory") {
        "MiB"
    } else if name.starts_with("time") {
        "minutes"
    } else {
        "seconds since the epoch"
    };
    match value {
        Value::Number(n) => match n.as_u64() {
            Some(v) => {
                c.warn(&field, format!("a plain number was accepted; v0.0.44 spells it {{\"set\": true, \"number\": {v}}}, which is what was forwarded"));
                Some((wrapped(v), Some(v)))
            }
            None => {
                c.error(
                    "invalid_number",
                    &field,
                    format!("{name} must be a whole number of {unit} >= 0"),
                );
                None
            }
        },
        Value::Object(o) => {
            if o.get("infinite") == Some(&Value::Bool(true)) {
                return Some((json!({"set": false, "infinite": true, "number": 0}), None));
            }
            if o.get("set") != Some(&Value::Bool(true)) {
                c.error(
                    "wrapped_number_unset",
                    &field,
                    format!("{name} has no \"set\": true, so Slurm would silently ignore it; send {{\"set\": true, \"number\": N}} or a plain number of {unit}"),
                );
                return None;
            }
            match o.get("number").and_then(Value::as_u64) {
                Some(v) => Some((wrapped(v), Some(v))),
                None => {
                    c.error(
                        "invalid_number",
                        format!("{field}.number"),
                        format!("{name}.number must be a whole number of {unit} >= 0"),
                    );
                    None
                }
            }
        }
        Value::String(s) if name.starts_with("memory") => match memory_mib(s) {
            Some(v) => {
                c.warn(&field, format!("\"{s}\" was read as {v} MiB and forwarded as {{\"set\": true, \"number\": {v}}}"));
                Some((wrapped(v), Some(v)))
            }
            None => {
                c.error("invalid_memory", &field, format!("{name} must be MiB as a number (e.g. 4096) or a size like \"4G\"; \"{s}\" is neither"));
                None
            }
        },
        Value::String(s) if name.starts_with("time") => {
            c.error(
                "time_limit_not_minutes",
                &field,
                format!("{name} is a number of minutes (e.g. 60), not a string like \"{s}\""),
            );
            None
        }
        Value::Null => Some((Value::Null, None)),
        _ => {
            c.error(
                "invalid_number",
                &field,
                format!("{name} must be a number of {unit} or {{\"set\": true, \"number\": N}}"),
            );
            None
        }
    }
}

/// The `job` object of the body (a copy to canonicalize), and warnings for top-level fields that
/// are not part of a v0.0.44 submit body.
fn job_object(c: &mut Check, top: &Map<String, Value>) -> Map<String, Value> {
    let job: Map<String, Value> = match top.get("job") {
        Some(Value::Object(j)) => j.clone(),
        Some(_) => {
            c.error(
                "invalid_job",
                "job",
                "\"job\" must be an object with the job's fields",
            );
            Map::new()
        }
        None => {
            if !top.contains_key("jobs") {
                c.error("job_missing", "job", "the body needs a \"job\" object, e.g. {\"job\": {\"script\": \"#!/bin/bash\\n...\", \"environment\": [\"PATH=/usr/bin:/bin\"], \"current_working_directory\": \"/mnt/efs\"}}");
            }
            Map::new()
        }
    };
    for key in top.keys() {
        if !matches!(key.as_str(), "job" | "jobs" | "script") {
            c.warn(key.clone(), format!("\"{key}\" is not a top-level field of a v0.0.44 submit body; it was dropped (did you mean to put it inside \"job\"?)"));
        }
    }

    job
}

/// The script: required, starting with `#!`; top-level `script` wins over `job.script`.
fn script(c: &mut Check, top: &Map<String, Value>, job: &mut Map<String, Value>) {
    // The script: top-level wins over job.script, as in slurmrestd.
    let script = match (top.get("script"), job.get("script")) {
        (Some(Value::String(t)), Some(Value::String(_))) => {
            c.warn("script", "both \"script\" and \"job.script\" were given; the top-level one was used, as slurmrestd does");
            Some(t.clone())
        }
        (Some(Value::String(t)), _) | (None, Some(Value::String(t))) => Some(t.clone()),
        (Some(_), _) => {
            c.error("invalid_script", "script", "\"script\" must be a string");
            None
        }
        (None, Some(_)) => {
            c.error(
                "invalid_script",
                "job.script",
                "\"job.script\" must be a string",
            );
            None
        }
        (None, None) => None,
    };
    match script.as_deref() {
        None | Some("") => c.error("script_missing", "job.script", "the job has no script; put the batch script in \"job.script\", starting with a line like #!/bin/bash"),
        Some(s) if !s.starts_with("#!") => c.error(
            "script_no_shebang",
            "job.script",
            "the script's first line must name its interpreter, like #!/bin/bash; Slurm would accept the job and then fail it at launch with \"Exec format error\"",
        ),
        Some(s) => {
            job.insert("script".into(), Value::String(s.to_string()));
        }
    }
}

/// The environment (required: an array of `NAME=value` strings, an object accepted and
/// converted) and the working directory (required, absolute).
fn environment_and_directory(c: &mut Check, job: &mut Map<String, Value>) {
    // The environment: required, an array of "K=V" strings.
    match job.get("environment").cloned() {
        None | Some(Value::Null) => c.error(
            "environment_missing",
            "job.environment",
            format!("the job has no environment; Slurm refuses it with a misleading \"I/O error writing script/environment to file\". Send at least [\"{DEFAULT_PATH}\"]"),
        ),
        Some(Value::Array(items)) if items.is_empty() => c.error(
            "environment_missing",
            "job.environment",
            format!("the environment is empty; Slurm refuses it with a misleading \"I/O error writing script/environment to file\". Send at least [\"{DEFAULT_PATH}\"]"),
        ),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let ok = item.as_str().is_some_and(|s| s.split_once('=').is_some_and(|(k, _)| !k.is_empty() && !k.contains(char::is_whitespace)));
                if !ok {
                    c.error("environment_invalid", format!("job.environment[{i}]"), "each environment entry must be a \"NAME=value\" string");
                }
            }
        }
        Some(Value::Object(map)) => {
            let mut entries = Vec::new();
            for (k, v) in &map {
                match v {
                    Value::String(s) => entries.push(Value::String(format!("{k}={s}"))),
                    Value::Number(n) => entries.push(Value::String(format!("{k}={n}"))),
                    _ => c.error("environment_invalid", format!("job.environment.{k}"), "environment values must be strings"),
                }
            }
            if entries.is_empty() {
                c.error("environment_missing", "job.environment", format!("the environment is empty; send at least [\"{DEFAULT_PATH}\"]"));
            } else {
                c.warn("job.environment", "an object was accepted; v0.0.44 spells the environment as [\"NAME=value\", ...], which is what was forwarded");
                job.insert("environment".into(), Value::Array(entries));
            }
        }
        Some(_) => c.error("environment_invalid", "job.environment", format!("the environment must be an array of \"NAME=value\" strings, like [\"{DEFAULT_PATH}\"]")),
    }

    match job.get("current_working_directory") {
        None | Some(Value::Null) => c.error(
            "working_directory_missing",
            "job.current_working_directory",
            "the job needs \"current_working_directory\" (Slurm refuses REST jobs without one); use a directory that exists on the nodes, like /mnt/efs",
        ),
        Some(Value::String(d)) if !d.starts_with('/') => c.error(
            "working_directory_relative",
            "job.current_working_directory",
            "\"current_working_directory\" must be an absolute path, like /mnt/efs",
        ),
        _ => {}
    }
}

/// Where stdout goes when the body does not say.
fn default_output(job: &mut Map<String, Value>) {
    // Every job's stdout lands on the shared filesystem unless the body says otherwise, so its
    // log can be read through the API (Slurm's own default is `slurm-%j.out` in the cwd).
    if job.get("standard_output").is_none_or(Value::is_null) {
        job.insert(
            "standard_output".into(),
            Value::String(DEFAULT_STDOUT.into()),
        );
    }
}

/// Fields that must be strings.
fn check_strings(c: &mut Check, job: &Map<String, Value>) {
    for name in STRINGS {
        if job
            .get(*name)
            .is_some_and(|v| !v.is_string() && !v.is_null())
        {
            c.error(
                "invalid_field",
                format!("job.{name}"),
                format!("\"{name}\" must be a string"),
            );
        }
    }
}

/// Memory and time limits, in v0.0.44's `{"set", "number"}` form; their values by field.
fn memory_and_time(
    c: &mut Check,
    job: &mut Map<String, Value>,
) -> std::collections::HashMap<&'static str, Option<u64>> {
    let mut values: std::collections::HashMap<&str, Option<u64>> = Default::default();
    for name in WRAPPED {
        let checked = job
            .get(*name)
            .cloned()
            .and_then(|v| check_wrapped(c, name, &v));
        if let Some((canonical, value)) = checked {
            job.insert((*name).into(), canonical);
            values.insert(name, value);
        }
    }
    if job.get("memory_per_node").is_some_and(|v| !v.is_null())
        && job.get("memory_per_cpu").is_some_and(|v| !v.is_null())
    {
        c.error(
            "memory_conflict",
            "job.memory_per_cpu",
            "send memory_per_node or memory_per_cpu, not both: Slurm stores them in one field and the later one silently wins",
        );
    }

    values
}

/// Counts that v0.0.44 wants as plain integers (tasks, cpus_per_task, …), by field.
fn counts(
    c: &mut Check,
    job: &mut Map<String, Value>,
) -> std::collections::HashMap<&'static str, u64> {
    let mut ints: std::collections::HashMap<&str, u64> = Default::default();
    for name in PLAIN_INTS {
        let field = format!("job.{name}");
        match job.get(*name).cloned() {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) => match n.as_u64().filter(|v| (1..=MAX_COUNT).contains(v)) {
                Some(v) => {
                    ints.insert(name, v);
                }
                None => c.error(
                    "invalid_number",
                    &field,
                    format!("{name} must be a whole number from 1 to {MAX_COUNT}"),
                ),
            },
            Some(Value::Object(o)) if o.get("set") == Some(&Value::Bool(true)) => {
                match o
                    .get("number")
                    .and_then(Value::as_u64)
                    .filter(|v| (1..=MAX_COUNT).contains(v))
                {
                    Some(v) => {
                        c.warn(&field, format!("v0.0.44 wants a plain integer for {name} in a request; forwarded as {v}"));
                        job.insert((*name).into(), json!(v));
                        ints.insert(name, v);
                    }
                    None => c.error(
                        "invalid_number",
                        &field,
                        format!("{name} must be a whole number from 1 to {MAX_COUNT}"),
                    ),
                }
            }
            Some(_) => c.error(
                "invalid_number",
                &field,
                format!("{name} must be a plain whole number, like 4"),
            ),
        }
    }

    ints
}

/// The minimum node count, from `nodes` (a count or a range) or `minimum_nodes`.
fn nodes(
    c: &mut Check,
    job: &mut Map<String, Value>,
    ints: &std::collections::HashMap<&'static str, u64>,
) -> u64 {
    match job.get("nodes").cloned() {
        None | Some(Value::Null) => ints.get("minimum_nodes").copied().unwrap_or(1),
        Some(Value::Number(n)) => match n.as_u64().filter(|v| (1..=MAX_COUNT).contains(v)) {
            Some(v) => {
                job.insert("nodes".into(), Value::String(v.to_string()));
                v
            }
            None => {
                c.error(
                    "invalid_nodes",
                    "job.nodes",
                    format!("nodes must be a count from 1 to {MAX_COUNT} like \"1\" or a range like \"2-4\""),
                );
                1
            }
        },
        Some(Value::String(s)) => {
            let first = s.split(['-', ':', ',']).next().unwrap_or("");
            match first
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|v| (1..=MAX_COUNT).contains(v))
            {
                Some(v) => v,
                None => {
                    c.error(
                        "invalid_nodes",
                        "job.nodes",
                        format!(
                            "nodes must be a count from 1 to {MAX_COUNT} like \"1\" or a range like \"2-4\", not \"{}\"",
                            clip(&s)
                        ),
                    );
                    1
                }
            }
        }
        Some(_) => {
            c.error(
                "invalid_nodes",
                "job.nodes",
                "nodes must be a count like \"1\" or a range like \"2-4\"",
            );
            1
        }
    }
}

/// Validates a v0.0.44 submit body and returns it in canonical form.
pub fn canonicalize(body: &Value) -> Result<CanonicalSubmit, Vec<FieldError>> {
    let mut c = Check {
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let Some(top) = body.as_object() else {
        c.error(
            "invalid_body",
            "",
            "the body must be a JSON object like {\"job\": {...}} (slurmrestd v0.0.44 job submit)",
        );
        return Err(c.errors);
    };
    if top.contains_key("jobs") {
        c.error("heterogeneous_unsupported", "jobs", "heterogeneous jobs (\"jobs\": [...]) are not supported; send one job as \"job\": {...}");
    }
    let mut job = job_object(&mut c, top);
    script(&mut c, top, &mut job);
    environment_and_directory(&mut c, &mut job);
    default_output(&mut job);
    check_strings(&mut c, &job);
    let values = memory_and_time(&mut c, &mut job);
    let ints = counts(&mut c, &mut job);
    let min_nodes = nodes(&mut c, &mut job, &ints);
    for key in job.keys() {
        if !KNOWN_JOB_FIELDS.contains(&key.as_str()) {
            c.warn(
                format!("job.{key}"),
                format!("\"{key}\" is not a v0.0.44 job field Clusterra knows; it was forwarded, but Slurm ignores unknown fields, so check the spelling"),
            );
        }
    }

    let gpus = count_gpus(&mut c, &job, &ints, min_nodes);
    if let Some(Some(m)) = values.get("time_limit")
        && *m > MAX_TIME_LIMIT_MINUTES
    {
        c.error(
            "time_limit_too_long",
            "job.time_limit",
            format!("time_limit is at most {MAX_TIME_LIMIT_MINUTES} minutes (a year), not {m}; for no limit send {{\"infinite\": true}}"),
        );
    }
    if !c.errors.is_empty() {
        return Err(c.errors);
    }
    let tasks = ints.get("tasks").copied().unwrap_or(1);
    let cpus_per_task = ints.get("cpus_per_task").copied().unwrap_or(1);
    // Every count is at most MAX_COUNT, so these products fit; the checks say so anyway.
    let cpus = tasks
        .checked_mul(cpus_per_task)
        .and_then(|n| u32::try_from(n).ok());
    let Some(cpus) = cpus else {
        c.error(
            "job_too_large",
            "job.tasks",
            "tasks × cpus_per_task is more CPUs than any cluster has; ask for fewer",
        );
        return Err(c.errors);
    };
    let memory_mib = match (values.get("memory_per_node"), values.get("memory_per_cpu")) {
        (Some(Some(per_node)), _) => match per_node.checked_mul(min_nodes) {
            Some(m) => Some(m),
            None => {
                c.error(
                    "job_too_large",
                    "job.memory_per_node",
                    "memory_per_node × nodes is more memory than any cluster has; ask for less",
                );
                return Err(c.errors);
            }
        },
        (_, Some(Some(per_cpu))) => match per_cpu.checked_mul(u64::from(cpus)) {
            Some(m) => Some(m),
            None => {
                c.error(
                    "job_too_large",
                    "job.memory_per_cpu",
                    "memory_per_cpu × CPUs is more memory than any cluster has; ask for less",
                );
                return Err(c.errors);
            }
        },
        _ => None,
    };
    let pinned = [
        "nodes",
        "minimum_nodes",
        "maximum_nodes",
        "tasks_per_node",
        "memory_per_node",
    ]
    .iter()
    .any(|k| job.get(*k).is_some_and(|v| !v.is_null()))
        || gpus > 0;
    let time_limit_minutes = values
        .get("time_limit")
        .copied()
        .flatten()
        .map(|m| u32::try_from(m).unwrap_or(u32::MAX));
    Ok(CanonicalSubmit {
        body: json!({ "job": Value::Object(job) }),
        warnings: c.warnings,
        shape: JobShape {
            cpus,
            memory_mib,
            // At most MAX_COUNT.
            nodes: u32::try_from(min_nodes).unwrap_or(u32::MAX),
            time_limit_minutes,
            gpus,
            tasks: (!pinned).then(|| u32::try_from(tasks).unwrap_or(u32::MAX)),
        },
    })
}

/// A user's text, cut short for an error message.
fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// GPUs in one TRES list like `gres/gpu:4,gres/gpu:a100:2,license/x:1` (`gpu:4` too).
fn gpus_in(list: &str) -> Option<u64> {
    let mut total: u64 = 0;
    for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let item = item.strip_prefix("gres/").unwrap_or(item);
        let mut parts = item.split(':');
        if parts.next() != Some("gpu") {
            continue;
        }
        let rest: Vec<&str> = parts.collect();
        // gpu, gpu:N, gpu:TYPE, gpu:TYPE:N
        let n = match rest.as_slice() {
            [] => 1,
            [last] | [_, last] if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) => {
                last.parse::<u64>().ok()?
            }
            // gpu:TYPE
            [_] => 1,
            _ => return None,
        };
        total = total.checked_add(n)?;
    }
    Some(total)
}

/// The job's GPUs for the whole job (checked: a count no cluster has is an error).
fn count_gpus(
    c: &mut Check,
    job: &Map<String, Value>,
    ints: &std::collections::HashMap<&str, u64>,
    nodes: u64,
) -> u32 {
    let tasks = ints.get("tasks").copied().unwrap_or(1);
    let mut total: u64 = 0;
    for (name, times) in [
        ("tres_per_job", 1),
        ("tres_per_node", nodes),
        ("tres_per_task", tasks),
    ] {
        let Some(list) = job.get(name).and_then(Value::as_str) else {
            continue;
        };
        let gpus = gpus_in(list)
            .filter(|g| *g <= MAX_COUNT)
            .and_then(|g| g.checked_mul(times))
            .and_then(|g| total.checked_add(g));
        match gpus {
            Some(t) => total = t,
            None => {
                c.error(
                    "invalid_gpus",
                    format!("job.{name}"),
                    format!(
                        "{name} must list GPUs like \"gres/gpu:4\" or \"gres/gpu:a100:2\" with a count from 0 to {MAX_COUNT}"
                    ),
                );
                return 0;
            }
        }
    }
    u32::try_from(total).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Value {
        json!({"job": {
            "name": "demo",
            "script": "#!/bin/bash\necho hi\n",
            "environment": ["PATH=/usr/bin:/bin"],
            "current_working_directory": "/mnt/efs",
            "tasks": 2,
            "cpus_per_task": 2,
            "memory_per_cpu": {"set": true, "number": 1024},
            "time_limit": {"set": true, "infinite": false, "number": 30}
        }})
    }

    fn codes(body: Value) -> Vec<(String, String)> {
        canonicalize(&body)
            .unwrap_err()
            .into_iter()
            .map(|e| (e.code.to_string(), e.field))
            .collect()
    }

    #[test]
    fn a_good_body_passes_and_gets_its_shape() {
        let out = canonicalize(&good()).unwrap();
        assert!(out.warnings.is_empty(), "{:?}", out.warnings);
        assert_eq!(
            out.shape,
            JobShape {
                cpus: 4,
                memory_mib: Some(4096),
                nodes: 1,
                time_limit_minutes: Some(30),
                gpus: 0,
                tasks: Some(2),
            }
        );
        assert_eq!(
            out.body["job"]["memory_per_cpu"],
            json!({"set": true, "infinite": false, "number": 1024})
        );
    }

    #[test]
    fn plain_numbers_are_accepted_with_a_warning_and_forwarded_wrapped() {
        let mut b = good();
        b["job"]["time_limit"] = json!(60);
        b["job"]["memory_per_cpu"] = json!("2G");
        let out = canonicalize(&b).unwrap();
        assert_eq!(
            out.body["job"]["time_limit"],
            json!({"set": true, "infinite": false, "number": 60})
        );
        assert_eq!(out.body["job"]["memory_per_cpu"]["number"], 2048);
        assert_eq!(out.warnings.len(), 2);
        assert_eq!(out.warnings[0].field, "job.time_limit");
    }

    #[test]
    fn every_pitfall_gets_its_own_error() {
        let mut b = good();
        b["job"]["script"] = json!("echo no shebang");
        assert_eq!(
            codes(b),
            vec![("script_no_shebang".into(), "job.script".into())]
        );

        let mut b = good();
        b["job"].as_object_mut().unwrap().remove("environment");
        assert_eq!(
            codes(b),
            vec![("environment_missing".into(), "job.environment".into())]
        );

        let mut b = good();
        b["job"]["environment"] = json!([]);
        assert_eq!(codes(b)[0].0, "environment_missing");

        let mut b = good();
        b["job"]["environment"] = json!(["NOEQUALS"]);
        assert_eq!(
            codes(b),
            vec![("environment_invalid".into(), "job.environment[0]".into())]
        );

        let mut b = good();
        b["job"]["time_limit"] = json!({"number": 60});
        assert_eq!(
            codes(b),
            vec![("wrapped_number_unset".into(), "job.time_limit".into())]
        );

        let mut b = good();
        b["job"]["time_limit"] = json!(MAX_TIME_LIMIT_MINUTES + 1);
        assert_eq!(
            codes(b.clone()),
            vec![("time_limit_too_long".into(), "job.time_limit".into())]
        );
        b["job"]["time_limit"] = json!({"set": true, "number": MAX_TIME_LIMIT_MINUTES});
        assert!(canonicalize(&b).is_ok());
        b["job"]["time_limit"] = json!("01:00:00");
        assert_eq!(
            codes(b),
            vec![("time_limit_not_minutes".into(), "job.time_limit".into())]
        );

        let mut b = good();
        b["job"]
            .as_object_mut()
            .unwrap()
            .remove("current_working_directory");
        assert_eq!(
            codes(b),
            vec![(
                "working_directory_missing".into(),
                "job.current_working_directory".into()
            )]
        );

        let mut b = good();
        b["job"]["memory_per_node"] = json!(4096);
        assert_eq!(
            codes(b),
            vec![("memory_conflict".into(), "job.memory_per_cpu".into())]
        );

        let mut b = good();
        b["job"].as_object_mut().unwrap().remove("script");
        assert_eq!(
            codes(b),
            vec![("script_missing".into(), "job.script".into())]
        );

        assert_eq!(
            codes(json!({"jobs": [good()["job"]]}))[0].0,
            "heterogeneous_unsupported"
        );
        assert_eq!(codes(json!([1]))[0].0, "invalid_body");
        assert_eq!(codes(json!({}))[0].0, "job_missing");
    }

    #[test]
    fn counts_are_bounded_and_no_product_overflows() {
        let mut b = good();
        b["job"]["nodes"] = json!("4294967295");
        assert_eq!(codes(b), vec![("invalid_nodes".into(), "job.nodes".into())]);
        let mut b = good();
        b["job"]["nodes"] = json!(100_001);
        assert_eq!(codes(b)[0].0, "invalid_nodes");
        let mut b = good();
        b["job"]["tasks"] = json!({"set": true, "number": 4294967296u64});
        assert_eq!(
            codes(b),
            vec![("invalid_number".into(), "job.tasks".into())]
        );

        // memory_per_node × nodes and memory_per_cpu × CPUs would overflow a u64.
        let mut b = good();
        b["job"].as_object_mut().unwrap().remove("memory_per_cpu");
        b["job"]["memory_per_node"] = json!({"set": true, "number": u64::MAX / 2});
        b["job"]["nodes"] = json!(3);
        assert_eq!(
            codes(b),
            vec![("job_too_large".into(), "job.memory_per_node".into())]
        );
        let mut b = good();
        b["job"]["memory_per_cpu"] = json!({"set": true, "number": u64::MAX / 3});
        assert_eq!(
            codes(b),
            vec![("job_too_large".into(), "job.memory_per_cpu".into())]
        );

        // 10^10 CPUs do not fit the shape: refused, not wrapped.
        let mut b = good();
        b["job"]["tasks"] = json!(100_000);
        b["job"]["cpus_per_task"] = json!(100_000);
        assert_eq!(codes(b), vec![("job_too_large".into(), "job.tasks".into())]);
        // The largest counts that fit still make a shape (the cluster's limits refuse it later).
        let mut b = good();
        b["job"]["tasks"] = json!(100_000);
        b["job"]["cpus_per_task"] = json!(1);
        b["job"]["memory_per_cpu"] = json!({"set": true, "number": 1});
        b["job"]["nodes"] = json!("100000-200000");
        let shape = canonicalize(&b).unwrap().shape;
        assert_eq!((shape.cpus, shape.nodes), (100_000, 100_000));
    }

    #[test]
    fn gpus_are_counted_from_every_tres_field() {
        let mut b = good();
        b["job"]["tres_per_job"] = json!("gres/gpu:2,license/matlab:1");
        b["job"]["tres_per_node"] = json!("gres/gpu:a100:4");
        b["job"]["tres_per_task"] = json!("gpu");
        b["job"]["nodes"] = json!(3);
        // 2 + 4 × 3 nodes + 1 × 2 tasks
        assert_eq!(canonicalize(&b).unwrap().shape.gpus, 16);
        let mut b = good();
        b["job"]["tres_per_node"] = json!("gres/gpu:a100:lots");
        assert_eq!(
            codes(b),
            vec![("invalid_gpus".into(), "job.tres_per_node".into())]
        );
        let mut b = good();
        b["job"]["tres_per_node"] = json!("gres/gpu:99999999999999999999");
        assert_eq!(codes(b)[0].0, "invalid_gpus");
    }

    #[test]
    fn all_errors_are_reported_at_once() {
        let b = json!({"job": {"script": "echo", "time_limit": "1h"}});
        let found: Vec<String> = codes(b).into_iter().map(|(c, _)| c).collect();
        assert_eq!(
            found,
            vec![
                "script_no_shebang",
                "environment_missing",
                "working_directory_missing",
                "time_limit_not_minutes"
            ]
        );
    }

    #[test]
    fn unknown_fields_are_forwarded_with_a_warning() {
        let mut b = good();
        b["job"]["partion"] = json!("compute");
        b["job"]["mail_user"] = json!("ada@lab.org");
        let out = canonicalize(&b).unwrap();
        assert_eq!(out.body["job"]["partion"], "compute");
        assert_eq!(out.body["job"]["mail_user"], "ada@lab.org");
        assert_eq!(out.warnings.len(), 1);
        assert_eq!(out.warnings[0].field, "job.partion");
    }

    #[test]
    fn spellings_are_canonicalised() {
        let b = json!({"script": "#!/bin/sh\ntrue", "job": {"environment": {"PATH": "/bin"}, "current_working_directory": "/tmp",
            "tasks": {"set": true, "number": 3}, "nodes": 2, "time_limit": {"infinite": true}}});
        let out = canonicalize(&b).unwrap();
        assert_eq!(out.body["job"]["script"], "#!/bin/sh\ntrue");
        assert_eq!(out.body["job"]["environment"], json!(["PATH=/bin"]));
        assert_eq!(out.body["job"]["tasks"], 3);
        assert_eq!(out.body["job"]["nodes"], "2");
        assert_eq!(
            out.shape,
            JobShape {
                cpus: 3,
                memory_mib: None,
                nodes: 2,
                time_limit_minutes: None,
                gpus: 0,
                tasks: None,
            }
        );
        assert!(out.body.get("script").is_none());
    }
}
