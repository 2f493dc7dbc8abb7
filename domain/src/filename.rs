//! Slurm's filename patterns (sbatch(1), "filename pattern"), the one expansion used by the local
//! executor to name a job's output files and by the log routes to find them again, and the rule
//! that says which of those files a job may be served as its own.
//!
//! Supported, as Slurm expands them for a batch script:
//!
//! | pattern | stands for |
//! |---|---|
//! | `%j` | the job id |
//! | `%x` | the job name |
//! | `%u` | the user name the job runs as |
//! | `%A` | the array's master job id; the job id for a job that is not an array |
//! | `%a` | the array task index; `4294967294` (Slurm's NO_VAL) for a job that is not an array |
//! | `%N` | the short name of the job's first node |
//! | `%%` | a literal `%` |
//!
//! A number between `%` and the letter zero-pads numbers to that width (`%5j` → `00042`), at most
//! 10 (a larger number pads to 10, as Slurm does); it is ignored for text (`%5x` is the name).
//! A pattern holding a backslash is not expanded at all: the backslashes are removed (`\\` keeps
//! one), as Slurm does. Anything else after a `%` (`%J`, `%s`, `%t`, `%n`, `%b`, a lone `%` at the
//! end, …) is refused with [`PatternError::Unsupported`]: Clusterra never guesses a file name.

use std::ops::Range;

use serde_json::Value;

/// The widest zero padding Slurm applies.
pub const MAX_WIDTH: usize = 10;

/// Slurm's NO_VAL: what `%a` expands to for a job that is not an array.
pub const NO_ARRAY_INDEX: u64 = 4_294_967_294;

/// The folder of the shared mount that holds one area per user: `<mount>/users/<email>/`.
pub const USER_AREAS: &str = "users";

/// What the patterns stand for, for one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobNames<'a> {
    pub job_id: u64,
    /// `%x`.
    pub name: &'a str,
    /// `%u`: the Unix user the job runs as; `None` when it is not known.
    pub user: Option<&'a str>,
    /// `%A` and `%a` of a task of an array job (master id, index); `None` for a plain job.
    pub array_task: Option<(u64, u32)>,
    /// `%N`: the short name of the job's first node; `None` until it has one.
    pub first_node: Option<&'a str>,
}

/// An expanded pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expanded {
    pub path: String,
    /// The byte ranges of `path` that `%j` (or `%A` of a plain job) wrote: the job id.
    pub job_id_at: Vec<Range<usize>>,
}

/// Why a pattern could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error(
        "{0:?} is not a filename pattern Clusterra expands (it expands %j %x %u %A %a %N and %%, with an optional width such as %5j)"
    )]
    Unsupported(String),
    #[error("{spec} stands for {what}, which is not known {when}")]
    NotKnown {
        spec: String,
        what: &'static str,
        when: &'static str,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// `%<width><letter>`; `text` is how it was written, for messages.
    Spec {
        letter: char,
        width: usize,
        text: String,
    },
}

/// Splits a pattern into literal text and specifiers, refusing what is not supported.
fn parse(pattern: &str) -> Result<Vec<Piece>, PatternError> {
    if pattern.contains('\\') {
        // Slurm: a backslash anywhere turns expansion off; escaping backslashes are removed.
        let mut out = String::with_capacity(pattern.len());
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                if let Some(next) = chars.next() {
                    out.push(next);
                }
            } else {
                out.push(c);
            }
        }
        return Ok(vec![Piece::Text(out)]);
    }
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            text.push(c);
            continue;
        }
        if chars.peek() == Some(&'%') {
            chars.next();
            text.push('%');
            continue;
        }
        let mut written = String::from("%");
        let mut digits = String::new();
        while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
            chars.next();
            digits.push(d);
        }
        written.push_str(&digits);
        let letter = chars.next();
        if let Some(l) = letter {
            written.push(l);
        }
        match letter {
            Some(l @ ('j' | 'x' | 'u' | 'A' | 'a' | 'N')) => {
                // Slurm caps the width at 10; more digits than fit a number pad to 10 too.
                let width = if digits.is_empty() {
                    0
                } else {
                    digits.parse::<usize>().unwrap_or(MAX_WIDTH).min(MAX_WIDTH)
                };
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Spec {
                    letter: l,
                    width,
                    text: written,
                });
            }
            _ => return Err(PatternError::Unsupported(written)),
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

/// Checks that every `%` sequence of a pattern is one Clusterra expands.
pub fn check(pattern: &str) -> Result<(), PatternError> {
    parse(pattern).map(|_| ())
}

/// Expands a pattern for one job.
pub fn expand(pattern: &str, names: &JobNames<'_>) -> Result<Expanded, PatternError> {
    let mut out = Expanded {
        path: String::with_capacity(pattern.len() + 16),
        job_id_at: Vec::new(),
    };
    for piece in parse(pattern)? {
        let (letter, width, text) = match piece {
            Piece::Text(t) => {
                out.path.push_str(&t);
                continue;
            }
            Piece::Spec {
                letter,
                width,
                text,
            } => (letter, width, text),
        };
        let number = |n: u64| format!("{n:0width$}");
        let not_known = |what, when| PatternError::NotKnown {
            spec: text.clone(),
            what,
            when,
        };
        match letter {
            'j' => {
                let start = out.path.len();
                out.path.push_str(&number(names.job_id));
                out.job_id_at.push(start..out.path.len());
            }
            'A' => match names.array_task {
                Some((master, _)) => out.path.push_str(&number(master)),
                None => {
                    let start = out.path.len();
                    out.path.push_str(&number(names.job_id));
                    out.job_id_at.push(start..out.path.len());
                }
            },
            'a' => out.path.push_str(&number(
                names
                    .array_task
                    .map_or(NO_ARRAY_INDEX, |(_, index)| u64::from(index)),
            )),
            'x' => out.path.push_str(names.name),
            'u' => out.path.push_str(
                names
                    .user
                    .ok_or_else(|| not_known("the user the job runs as", "here"))?,
            ),
            'N' => {
                out.path.push_str(names.first_node.ok_or_else(|| {
                    not_known("the job's first node", "until the job has started")
                })?)
            }
            _ => return Err(PatternError::Unsupported(text)),
        }
    }
    Ok(out)
}

/// The job name `%x` stands for: the body's `name`, `job` without one (what Clusterra records).
pub fn job_name(job: &Value) -> &str {
    job.get("name").and_then(Value::as_str).unwrap_or("job")
}

/// The file a job's stdout goes to, as the job sees it: its `standard_output` (the submit default,
/// [`crate::submit::DEFAULT_STDOUT`], when it has none) through [`job_file`]. `job` is the body's
/// `job` object.
pub fn stdout_file(job: &Value, names: &JobNames<'_>) -> Result<Expanded, PatternError> {
    let pattern = job
        .get("standard_output")
        .and_then(Value::as_str)
        .unwrap_or(crate::submit::DEFAULT_STDOUT);
    job_file(job, pattern, names)
}

/// A file pattern of a job (`standard_output`, `standard_error`, …) expanded, and joined to the
/// job's `current_working_directory` when relative, as Slurm does.
pub fn job_file(
    job: &Value,
    pattern: &str,
    names: &JobNames<'_>,
) -> Result<Expanded, PatternError> {
    let mut expanded = expand(pattern, names)?;
    if !expanded.path.starts_with('/') {
        let cwd = job
            .get("current_working_directory")
            .and_then(Value::as_str)
            .unwrap_or("/");
        let prefix = format!("{}/", cwd.trim_end_matches('/'));
        expanded.path.insert_str(0, &prefix);
        for r in &mut expanded.job_id_at {
            *r = r.start + prefix.len()..r.end + prefix.len();
        }
    }
    Ok(expanded)
}

/// The first host of a Slurm host list (`node[03-05,9],gpu1` → `node03`), for `%N`.
pub fn first_node(list: &str) -> Option<String> {
    let mut out = String::new();
    let mut depth = 0;
    let mut in_brackets = false;
    let mut took_first = false;
    for c in list.trim().chars() {
        match c {
            ',' if depth == 0 => break,
            '[' => {
                depth += 1;
                in_brackets = true;
                took_first = false;
            }
            ']' => {
                depth -= 1;
                in_brackets = false;
            }
            // Inside brackets: the first number of the first range, as written (zeros kept).
            _ if in_brackets => {
                if !took_first && c.is_ascii_digit() {
                    out.push(c);
                } else if !out.is_empty() {
                    took_first = true;
                }
            }
            _ => out.push(c),
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Why a job's output file belongs to it and no other job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// Under `<mount>/users/<its user>/`: its user's own area.
    UserArea,
    /// Outside every user area, and the last number in its path is the job id that `%j` wrote:
    /// no other job's file can have that name.
    JobIdNamed,
}

/// Why a job's output file is not served as its own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotOwned {
    #[error(
        "{path} is not a file under {mount} (no '.', '..' or empty segments); only files on the shared filesystem can be read through the API"
    )]
    Outside { path: String, mount: String },
    #[error(
        "{path} is in another user's area ({mount}/{USER_AREAS}/<email>/ belongs to that user); a job's log is served only from its own user's area or from a file named by its job id"
    )]
    OtherUsersArea { path: String, mount: String },
    #[error(
        "{path} could be another job's file: a log is served only from {mount}/{USER_AREAS}/<your email>/ or from a file whose last number is the job id written by %j (e.g. {mount}/job_%j.out or {mount}/%x-%j.out)"
    )]
    Shared { path: String, mount: String },
}

/// Decides whether an expanded output path is the job's own, and where it is relative to the
/// shared mount (`mount`, e.g. `/mnt/efs`). `user` is the job's user (its email).
///
/// The rule makes two jobs of different users never resolve to one file: a file in a user area
/// is served only to that user's jobs, and a file outside them only to the job whose id is the
/// last number of its path — a function of the path alone, so at most one job.
pub fn owned(
    expanded: &Expanded,
    mount: &str,
    user: &str,
) -> Result<(String, Ownership), NotOwned> {
    let mount = mount.trim_end_matches('/');
    let path = &expanded.path;
    let outside = || NotOwned::Outside {
        path: path.clone(),
        mount: mount.to_string(),
    };
    let rel = path
        .strip_prefix(mount)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(outside)?;
    let segments: Vec<&str> = rel.split('/').collect();
    if segments
        .iter()
        .any(|s| s.is_empty() || *s == "." || *s == "..")
        || rel.contains('\0')
    {
        return Err(outside());
    }
    if segments.len() >= 2 && segments[0] == USER_AREAS {
        return if segments[1] == user {
            Ok((rel.to_string(), Ownership::UserArea))
        } else {
            Err(NotOwned::OtherUsersArea {
                path: path.clone(),
                mount: mount.to_string(),
            })
        };
    }
    // The last run of digits of the path must be exactly what %j wrote.
    let offset = path.len() - rel.len();
    let bytes = rel.as_bytes();
    let end = bytes.iter().rposition(u8::is_ascii_digit).map(|i| i + 1);
    let run = end.map(|end| {
        let start = bytes[..end]
            .iter()
            .rposition(|b| !b.is_ascii_digit())
            .map_or(0, |i| i + 1);
        offset + start..offset + end
    });
    match run {
        Some(run) if expanded.job_id_at.contains(&run) => {
            Ok((rel.to_string(), Ownership::JobIdNamed))
        }
        _ => Err(NotOwned::Shared {
            path: path.clone(),
            mount: mount.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn plain(job_id: u64, name: &str) -> JobNames<'_> {
        JobNames {
            job_id,
            name,
            user: Some("clusterra-job"),
            array_task: None,
            first_node: Some("cpu-a1b2c3d4.77-1"),
        }
    }

    fn path(pattern: &str, names: &JobNames<'_>) -> String {
        expand(pattern, names).unwrap().path
    }

    #[test]
    fn every_supported_pattern_expands_as_slurm_does() {
        let n = plain(42, "fit");
        assert_eq!(path("/mnt/efs/job_%j.out", &n), "/mnt/efs/job_42.out");
        assert_eq!(path("%x-%j-100%%.out", &n), "fit-42-100%.out");
        assert_eq!(path("%u/%x", &n), "clusterra-job/fit");
        assert_eq!(path("%N.log", &n), "cpu-a1b2c3d4.77-1.log");
        // A plain job: %A is its id, %a Slurm's NO_VAL.
        assert_eq!(path("slurm-%A_%a.out", &n), "slurm-42_4294967294.out");
        let task = JobNames {
            array_task: Some((40, 2)),
            ..n
        };
        assert_eq!(path("slurm-%A_%a-%j.out", &task), "slurm-40_2-42.out");
        assert_eq!(path("%%j is literal", &n), "%j is literal");
        assert_eq!(path("100%%%j", &n), "100%42");
        assert_eq!(path("no patterns", &n), "no patterns");
    }

    #[test]
    fn widths_zero_pad_numbers_up_to_ten_and_are_ignored_for_text() {
        let n = plain(128, "fit");
        assert_eq!(path("job%4j.out", &n), "job0128.out");
        assert_eq!(path("job%2j.out", &n), "job128.out");
        assert_eq!(path("%10j", &n), "0000000128");
        assert_eq!(path("%12j", &n), "0000000128", "capped at 10");
        assert_eq!(path("%99999999999999999999j", &n), "0000000128");
        assert_eq!(path("%0j", &n), "128");
        assert_eq!(path("%3a", &n), "4294967294");
        let task = JobNames {
            array_task: Some((7, 3)),
            ..n
        };
        assert_eq!(path("%3A_%3a", &task), "007_003");
        assert_eq!(
            path("%5x-%5u-%5N", &n),
            "fit-clusterra-job-cpu-a1b2c3d4.77-1"
        );
    }

    #[test]
    fn a_backslash_turns_expansion_off() {
        let n = plain(5, "fit");
        assert_eq!(path(r"/mnt/efs/\%j.out", &n), "/mnt/efs/%j.out");
        assert_eq!(path(r"a\\b%x", &n), r"a\b%x");
        assert!(expand(r"a\%s", &n).unwrap().job_id_at.is_empty());
    }

    #[test]
    fn what_is_not_expanded_is_refused_not_guessed() {
        let n = plain(5, "fit");
        for bad in ["%J", "%s", "%t", "%n", "%b", "x%", "x%5", "%q", "%5%"] {
            assert!(
                matches!(expand(bad, &n), Err(PatternError::Unsupported(_))),
                "{bad}"
            );
            assert!(check(bad).is_err(), "{bad}");
        }
        let unknown = JobNames {
            first_node: None,
            user: None,
            ..n
        };
        let err = expand("%N.out", &unknown).unwrap_err();
        assert!(
            err.to_string().contains("until the job has started"),
            "{err}"
        );
        assert!(matches!(
            expand("%u", &unknown),
            Err(PatternError::NotKnown { .. })
        ));
        assert!(check("%N-%u-%j").is_ok());
    }

    #[test]
    fn the_job_id_positions_are_recorded() {
        let e = expand("/a/%j_%5A.%a", &plain(42, "x")).unwrap();
        assert_eq!(e.path, "/a/42_00042.4294967294");
        assert_eq!(e.job_id_at, vec![3..5, 6..11]);
    }

    #[test]
    fn stdout_defaults_and_joins_the_working_directory() {
        let n = plain(9, "fit");
        let e = stdout_file(&json!({"current_working_directory": "/mnt/efs"}), &n).unwrap();
        assert_eq!(e.path, "/mnt/efs/job_9.out");
        let e = stdout_file(
            &json!({"current_working_directory": "/mnt/efs/run/", "standard_output": "out-%j.txt"}),
            &n,
        )
        .unwrap();
        assert_eq!(e.path, "/mnt/efs/run/out-9.txt");
        assert_eq!(&e.path[e.job_id_at[0].clone()], "9");
        assert_eq!(job_name(&json!({})), "job");
        assert_eq!(job_name(&json!({"name": "fit"})), "fit");
    }

    #[test]
    fn first_node_of_a_host_list() {
        assert_eq!(first_node("node[03-05,9],gpu1").as_deref(), Some("node03"));
        assert_eq!(first_node("cpu-a.1-2").as_deref(), Some("cpu-a.1-2"));
        assert_eq!(first_node("a,b").as_deref(), Some("a"));
        assert_eq!(
            first_node("rack[1-2]-n[07-08]").as_deref(),
            Some("rack1-n07")
        );
        assert_eq!(first_node(""), None);
    }

    fn owns(pattern: &str, job_id: u64, name: &str, user: &str) -> Result<Ownership, NotOwned> {
        let e = expand(pattern, &plain(job_id, name)).unwrap();
        owned(&e, "/mnt/efs", user).map(|(_, o)| o)
    }

    #[test]
    fn a_job_owns_its_user_area_and_its_job_id_named_files() {
        let ada = "ada@lab.org";
        assert_eq!(
            owns("/mnt/efs/job_%j.out", 7, "x", ada),
            Ok(Ownership::JobIdNamed)
        );
        assert_eq!(
            owns("/mnt/efs/%x-%j.out", 7, "fit2", ada),
            Ok(Ownership::JobIdNamed)
        );
        assert_eq!(
            owns("/mnt/efs/%5j/out.txt", 7, "x", ada),
            Ok(Ownership::JobIdNamed)
        );
        assert_eq!(
            owns("/mnt/efs/run_2024/job_%j.out", 7, "x", ada),
            Ok(Ownership::JobIdNamed)
        );
        assert_eq!(
            owns("/mnt/efs/users/ada@lab.org/fit.out", 7, "x", ada),
            Ok(Ownership::UserArea)
        );
        let (rel, _) = owned(
            &expand("/mnt/efs/users/ada@lab.org/%j", &plain(3, "x")).unwrap(),
            "/mnt/efs",
            ada,
        )
        .unwrap();
        assert_eq!(rel, "users/ada@lab.org/3");
    }

    #[test]
    fn files_another_job_could_name_are_not_owned() {
        let bob = "bob@lab.org";
        // The review's case: a job named like another job's file.
        assert!(matches!(
            owns("/mnt/efs/%x.out", 9, "job_1", bob),
            Err(NotOwned::Shared { .. })
        ));
        assert!(matches!(
            owns("/mnt/efs/job_1.out", 9, "x", bob),
            Err(NotOwned::Shared { .. })
        ));
        // The id must be the whole last number: job 23 must not reach job 123's file, and
        // digits after the id (from the name or literal) make it ambiguous.
        assert!(owns("/mnt/efs/job_1%j.out", 23, "x", bob).is_err());
        assert!(owns("/mnt/efs/job_%j1.out", 12, "x", bob).is_err());
        assert!(owns("/mnt/efs/%j_%x.out", 23, "run2", bob).is_err());
        assert!(owns("/mnt/efs/%j/job_123.out", 2024, "x", bob).is_err());
        assert!(owns("/mnt/efs/slurm-%A_%a.out", 5, "x", bob).is_err());
        // Another user's area, even with the job id in the name.
        assert!(matches!(
            owns("/mnt/efs/users/ada@lab.org/job_%j.out", 9, "x", bob),
            Err(NotOwned::OtherUsersArea { .. })
        ));
        assert!(matches!(
            owns("/mnt/efs/users/%x/out", 9, "ada@lab.org", bob),
            Err(NotOwned::OtherUsersArea { .. })
        ));
        for outside in [
            "/etc/job_%j.out",
            "/mnt/efs",
            "/mnt/efs/",
            "/mnt/efs/../job_%j.out",
            "/mnt/efs//job_%j.out",
            "/mnt/efsx/job_%j.out",
        ] {
            assert!(
                matches!(owns(outside, 9, "x", bob), Err(NotOwned::Outside { .. })),
                "{outside}"
            );
        }
    }

    #[test]
    fn no_two_jobs_resolve_to_one_owned_file() {
        // Every pair of jobs (ids 1..=130, two users, a few names) over patterns mixing the id
        // with literal digits and names: an owned file has exactly one owner job.
        let patterns = [
            "/mnt/efs/job_%j.out",
            "/mnt/efs/job_1%j.out",
            "/mnt/efs/job_%j1.out",
            "/mnt/efs/%x.out",
            "/mnt/efs/%x%j.out",
            "/mnt/efs/%x_%j.out",
            "/mnt/efs/%3j.out",
            "/mnt/efs/%j/job_12.out",
            "/mnt/efs/job_12/%j.out",
            "/mnt/efs/users/%x/o",
        ];
        let names = ["job_1", "a1", "ada@lab.org", "bob@lab.org", "x"];
        let users = ["ada@lab.org", "bob@lab.org"];
        let mut owners: std::collections::HashMap<String, (u64, &str)> = Default::default();
        for id in 1..=130u64 {
            for (k, user) in users.iter().enumerate() {
                // Ids are unique per cluster: each user has its own half.
                let job_id = id * 2 + k as u64;
                for pattern in patterns {
                    for name in names {
                        let e = expand(pattern, &plain(job_id, name)).unwrap();
                        if let Ok((rel, how)) = owned(&e, "/mnt/efs", user) {
                            let previous = owners.insert(rel.clone(), (job_id, user));
                            if let Some((other, other_user)) = previous {
                                assert!(
                                    other == job_id
                                        || (how == Ownership::UserArea && other_user == *user),
                                    "{rel}: job {other} of {other_user} and job {job_id} of {user}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
