//! Who the local executor's jobs run as, and keeping them out of the server's data directory.
//!
//! A server running as root runs jobs as an unprivileged user (`executor_user`, default
//! [`DEFAULT_USER`], made with `useradd --system` if missing) and makes its data directory its
//! own: the job user may pass through it to the efs root and to its scripts, and read nothing
//! else (`jwt-secret`, the database, the object store, the executor's records). A server that is
//! not root cannot switch users: its jobs run as itself and can read its data directory, which
//! [`resolve`] says in a warning the server prints at start.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The job user a root server makes when `executor_user` is not set.
pub const DEFAULT_USER: &str = "clusterra-job";

/// The Unix user jobs run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobUser {
    /// Its name: what `%u` stands for.
    pub name: String,
    /// `(uid, gid)` to switch to; `None`: jobs run as the server's own user.
    pub switch: Option<(u32, u32)>,
}

impl JobUser {
    /// The server's own user: jobs are not switched.
    pub fn current() -> Self {
        let uid = nix::unistd::geteuid();
        let name = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| uid.to_string());
        Self { name, switch: None }
    }
}

/// What [`resolve`] decided.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub user: JobUser,
    /// Said at start, in the banner and the log, when jobs are not isolated from the server.
    pub warning: Option<String>,
    /// The user was made just now.
    pub created: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum JobUserError {
    #[error(
        "executor_user {0:?} does not exist; create it (useradd --system {0}) or leave executor_user unset to use {DEFAULT_USER}"
    )]
    NoSuchUser(String),
    #[error(
        "could not create the job user {name} with useradd: {detail}; create an unprivileged user and name it in executor_user (executor_user = \"root\" runs jobs as root, which lets them read the data directory)"
    )]
    CannotCreate { name: String, detail: String },
    #[error("could not look up the user {name}: {source}")]
    Lookup { name: String, source: nix::Error },
    #[error("{0}")]
    Layout(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JobUserError + '_ {
    move |source| JobUserError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Decides who jobs run as. `configured`: the `executor_user` setting (empty = unset).
pub fn resolve(configured: Option<&str>) -> Result<Resolved, JobUserError> {
    let configured = configured.map(str::trim).filter(|c| !c.is_empty());
    if !nix::unistd::geteuid().is_root() {
        let user = JobUser::current();
        let warning = match configured {
            Some(c) if c != user.name => format!(
                "local jobs run as {}, this server's own user, not as executor_user {c}: only a server running as root can switch users; jobs can read the data directory, jwt-secret included, and so mint tokens for anyone — give no one else a token, or run the server as root",
                user.name
            ),
            _ => format!(
                "local jobs run as {}, this server's own user: they can read the data directory, jwt-secret included, and so mint tokens for anyone — give no one else a token, or run the server as root (jobs then run as {DEFAULT_USER})",
                user.name
            ),
        };
        return Ok(Resolved {
            user,
            warning: Some(warning),
            created: false,
        });
    }
    let name = configured.unwrap_or(DEFAULT_USER).to_string();
    let lookup = |name: &str| {
        nix::unistd::User::from_name(name).map_err(|source| JobUserError::Lookup {
            name: name.to_string(),
            source,
        })
    };
    let mut created = false;
    let user = match lookup(&name)? {
        Some(u) => u,
        None if configured.is_some() => return Err(JobUserError::NoSuchUser(name)),
        None => {
            // Servers starting together must not both run useradd: two concurrent runs can each
            // rewrite /etc/passwd from what they read, and one user is lost.
            let _lock = creation_lock();
            match lookup(&name)? {
                Some(u) => u,
                None => {
                    create_system_user(&name)?;
                    created = true;
                    lookup(&name)?.ok_or_else(|| JobUserError::CannotCreate {
                        name: name.clone(),
                        detail: "useradd succeeded but the user cannot be found".into(),
                    })?
                }
            }
        }
    };
    if user.uid.is_root() {
        return Ok(Resolved {
            user: JobUser { name, switch: None },
            warning: Some(
                "local jobs run as root (executor_user is a root account): they can read the data directory, jwt-secret included, and so mint tokens for anyone".into(),
            ),
            created,
        });
    }
    Ok(Resolved {
        user: JobUser {
            name,
            switch: Some((user.uid.as_raw(), user.gid.as_raw())),
        },
        warning: None,
        created,
    })
}

/// An exclusive lock held while the job user is looked up and made, shared by every Clusterra
/// server on the machine (released when the file is dropped). `None` when no lock file can be
/// opened: then useradd's own locking is all there is.
fn creation_lock() -> Option<std::fs::File> {
    let dir = ["/run/lock", "/var/lock", "/tmp"]
        .into_iter()
        .find(|d| Path::new(d).is_dir())?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(Path::new(dir).join("clusterra-job-user.lock"))
        .ok()?;
    file.lock().ok()?;
    Some(file)
}

/// `useradd --system` with no home and no login shell; another server making the same user at the
/// same time is not an error (the caller looks the user up again).
fn create_system_user(name: &str) -> Result<(), JobUserError> {
    let shell = ["/usr/sbin/nologin", "/sbin/nologin", "/bin/false"]
        .into_iter()
        .find(|s| Path::new(s).exists())
        .unwrap_or("/bin/false");
    let mut detail = String::new();
    for _ in 0..10 {
        let out = std::process::Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--user-group",
                "--shell",
                shell,
            ])
            .args(["--comment", "Clusterra local jobs"])
            .arg(name)
            .output();
        match out {
            // 9: the name is taken (made meanwhile by another process).
            Ok(o) if o.status.success() || o.status.code() == Some(9) => return Ok(()),
            // 10: /etc/passwd is locked by another useradd: try again shortly.
            Ok(o) if o.status.code() == Some(10) => {
                detail = String::from_utf8_lossy(&o.stderr).trim().to_string();
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Ok(o) => {
                return Err(JobUserError::CannotCreate {
                    name: name.into(),
                    detail: format!(
                        "{} ({})",
                        String::from_utf8_lossy(&o.stderr).trim(),
                        o.status
                    ),
                });
            }
            Err(e) => {
                return Err(JobUserError::CannotCreate {
                    name: name.into(),
                    detail: e.to_string(),
                });
            }
        }
    }
    Err(JobUserError::CannotCreate {
        name: name.into(),
        detail,
    })
}

/// Files the server creates from now on are its own only (umask 077). Only for a server whose
/// jobs run as another user.
pub fn private_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
}

/// Makes the data directory the server's alone, except the way to what jobs need: the efs root
/// (handed to the job user, once, with everything in it) and the local executor's `scripts`
/// folder. Every directory on the way to those is `0711` (passable, not listable); everything
/// else in them is stripped of group and other permissions (`jwt-secret`, the database, the
/// object store, the executor's records). Returns warnings for directories outside the data
/// directory that the job user cannot pass (jobs would fail to start).
pub fn secure_data_dir(
    data_dir: &Path,
    efs_root: &Path,
    scripts_dir: &Path,
    user: &JobUser,
) -> Result<Vec<String>, JobUserError> {
    let Some((uid, gid)) = user.switch else {
        return Ok(Vec::new());
    };
    for dir in [efs_root, scripts_dir] {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let data = std::fs::canonicalize(data_dir).map_err(io(data_dir))?;
    let efs = std::fs::canonicalize(efs_root).map_err(io(efs_root))?;
    let scripts = std::fs::canonicalize(scripts_dir).map_err(io(scripts_dir))?;
    if data.starts_with(&efs) {
        return Err(JobUserError::Layout(format!(
            "efs_root {} contains the data directory {}: jobs running as {} would reach the server's secrets; choose an efs_root outside it",
            efs.display(),
            data.display(),
            user.name
        )));
    }
    // The directories jobs pass through inside the data directory, and where they lead.
    let mut passable: Vec<PathBuf> = vec![data.clone()];
    for target in [&efs, &scripts] {
        if let Ok(rel) = target.strip_prefix(&data) {
            let mut at = data.clone();
            for c in rel.components() {
                at.push(c);
                if !passable.contains(&at) {
                    passable.push(at.clone());
                }
            }
        }
    }
    for dir in &passable {
        if *dir == efs {
            continue;
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).map_err(io(dir))?;
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let path = entry.map_err(io(dir))?.path();
            if passable.contains(&path) {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
            if meta.file_type().is_symlink() || meta.mode() & 0o077 == 0 {
                continue;
            }
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(meta.mode() & 0o700))
                .map_err(io(&path))?;
        }
    }
    // The efs root is the job user's: handed over with its content the first time.
    let meta = std::fs::metadata(&efs).map_err(io(&efs))?;
    if meta.uid() != uid {
        chown_tree(&efs, uid, gid)?;
    }
    let mut warnings = Vec::new();
    for target in [&efs, &scripts] {
        for dir in target.ancestors().skip(1) {
            if dir.starts_with(&data) && passable.iter().any(|p| p == dir) {
                continue;
            }
            let Ok(m) = std::fs::metadata(dir) else {
                continue;
            };
            let bit = if m.uid() == uid {
                0o100
            } else if m.gid() == gid {
                0o010
            } else {
                0o001
            };
            if m.mode() & bit == 0 {
                warnings.push(format!(
                    "the job user {} cannot reach {} because {} is mode {:o}: local jobs will fail to start; run `chmod o+x {}` or choose a data_dir/efs_root it can reach",
                    user.name,
                    target.display(),
                    dir.display(),
                    m.mode() & 0o7777,
                    dir.display()
                ));
                break;
            }
        }
    }
    Ok(warnings)
}

/// `chown -hR uid:gid dir` (links are changed themselves, never followed).
fn chown_tree(dir: &Path, uid: u32, gid: u32) -> Result<(), JobUserError> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid)).map_err(io(dir))?;
    let meta = std::fs::symlink_metadata(dir).map_err(io(dir))?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let path = entry.map_err(io(dir))?.path();
            chown_tree(&path, uid, gid)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_data_dir_is_private_but_passable_to_efs_and_scripts() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let efs = data.join("efs");
        let scripts = data.join("executor/scripts");
        std::fs::create_dir_all(data.join("objects/bucket")).unwrap();
        std::fs::create_dir_all(data.join("executor/jobs")).unwrap();
        std::fs::write(data.join("jwt-secret"), "s").unwrap();
        std::fs::write(data.join("clusterra.db"), "db").unwrap();
        std::fs::set_permissions(
            data.join("clusterra.db"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        std::fs::set_permissions(data.join("objects"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::create_dir_all(efs.join("old")).unwrap();
        std::fs::write(efs.join("old/job_1.out"), "x").unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let user = JobUser {
            name: "someone".into(),
            // Our own ids, so the test runs without root; the modes are what is checked.
            switch: Some((me, nix::unistd::getegid().as_raw())),
        };
        secure_data_dir(&data, &efs, &scripts, &user).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&data), 0o711);
        assert_eq!(mode(&data.join("executor")), 0o711);
        assert_eq!(mode(&scripts), 0o711);
        assert_eq!(mode(&data.join("executor/jobs")) & 0o077, 0);
        assert_eq!(mode(&data.join("clusterra.db")), 0o600);
        assert_eq!(mode(&data.join("objects")), 0o700);
        assert_eq!(mode(&data.join("jwt-secret")) & 0o077, 0);
        // The efs root keeps its modes.
        assert_eq!(mode(&efs) & 0o700, 0o700);
        // An efs root that holds the data directory is refused.
        let err = secure_data_dir(&data, dir.path(), &scripts, &user).unwrap_err();
        assert!(
            err.to_string().contains("contains the data directory"),
            "{err}"
        );
    }

    #[test]
    fn a_server_that_is_not_root_says_jobs_are_not_isolated() {
        if nix::unistd::geteuid().is_root() {
            return; // covered by tests/tests/isolation.rs as root
        }
        let r = resolve(Some("nobody")).unwrap();
        assert_eq!(r.user.switch, None);
        assert!(r.warning.unwrap().contains("jwt-secret"));
    }
}
