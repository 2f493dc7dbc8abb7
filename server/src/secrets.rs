//! The embedded default's token-signing secret: 32 random bytes, hex, in `<data dir>/jwt-secret`,
//! readable by its owner only.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::{Context, Error, Result, ensure};

/// Reads the secret, creating it if missing. Returns it and whether it was just created.
pub fn load_or_create(path: &Path) -> Result<(Vec<u8>, bool)> {
    if let Some(dir) = path.parent() {
        crate::store::create_private_dir(dir)?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).map_err(|e| Error::Start {
                what: "no randomness for the token secret".into(),
                source: e.to_string().into(),
            })?;
            let text = hex::encode(bytes);
            file.write_all(text.as_bytes())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("could not write {}", path.display()))?;
            Ok((text.into_bytes(), true))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let mode = std::fs::metadata(path)
                .with_context(|| format!("could not read {}", path.display()))?
                .permissions()
                .mode();
            ensure!(
                mode & 0o077 == 0,
                "{} is readable by others (mode {:o}); run `chmod 600 {}`",
                path.display(),
                mode & 0o777,
                path.display()
            );
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("could not read {}", path.display()))?;
            let text = text.trim();
            ensure!(
                text.len() >= 32,
                "{} is too short to be a secret; delete it to have a new one made (every token minted with it stops working)",
                path.display()
            );
            Ok((text.as_bytes().to_vec(), false))
        }
        Err(e) => Err(e).with_context(|| format!("could not create {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_private_and_refused_when_loose() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d/jwt-secret");
        let (a, created) = load_or_create(&path).unwrap();
        assert!(created);
        assert_eq!(a.len(), 64);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (b, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(a, b);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
