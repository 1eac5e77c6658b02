//! The host's data directory: where it is, what is in it, and how its private files are
//! written.
//!
//! `--data-dir` (or `ATMOSPHERE_DATA_DIR`) names it; without the flag it is the user's data
//! directory (e.g. `~/.local/share/atmosphere`). It holds
//!
//! - `atmosphere.db`: the SQLite store, with the mesh's private key ([`crate::store`]);
//! - `admin_secret`: the secret of the admin link and `Authorization: Bearer`
//!   ([`crate::serve::auth`]; `atmosphere token` reads it too).
//!
//! Both are secrets, so the directory is created 0700 and files in it are written 0600.
//! An existing directory is not trusted blindly: [`check_private`] refuses one (or such a
//! file in it) that another user owns or that its group or others can write to, since
//! whoever can write there can replace the admin secret or the mesh key.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// File name of the SQLite store inside the data dir.
const DATABASE_FILE: &str = "atmosphere.db";
/// File name of the admin secret inside the data dir.
const ADMIN_SECRET_FILE: &str = "admin_secret";

/// No `--data-dir` was given and the platform has no user data directory (e.g. no `$HOME`).
#[derive(Debug, thiserror::Error)]
#[error("cannot find a user data directory; pass --data-dir")]
pub struct NoUserDataDir;

/// The data dir: `flag` (`--data-dir` / `ATMOSPHERE_DATA_DIR`) if given, else the user's
/// data directory. Shared by `serve` and `token`, so `token` finds the running host's
/// secret without flags.
pub fn resolve(flag: Option<&Path>) -> Result<PathBuf, NoUserDataDir> {
    match flag {
        Some(d) => Ok(d.to_path_buf()),
        None => directories::ProjectDirs::from("", "", "atmosphere")
            .map(|p| p.data_dir().to_path_buf())
            .ok_or(NoUserDataDir),
    }
}

/// `<data_dir>/atmosphere.db`.
pub fn database_path(data_dir: &Path) -> PathBuf {
    data_dir.join(DATABASE_FILE)
}

/// `<data_dir>/admin_secret`.
pub fn admin_secret_path(data_dir: &Path) -> PathBuf {
    data_dir.join(ADMIN_SECRET_FILE)
}

/// Why the data dir, or a secret file in it, cannot be trusted (Unix only).
#[derive(Debug, thiserror::Error)]
pub enum NotPrivate {
    /// Its group or others may write to it.
    #[error(
        "{path} can be written by other users (mode {mode:o}): whoever can write there can \
         replace the admin secret or the mesh key; run `chmod {fix:o} {path}`",
        path = .path.display()
    )]
    Writable {
        path: PathBuf,
        mode: u32,
        /// The mode to give it: 700 for the directory, 600 for a file.
        fix: u32,
    },
    /// Another user owns it.
    #[error(
        "{path} belongs to user id {owner}, not to the user running the host ({me}): run the \
         host as its owner, or give it to this user (`chown`) and `chmod {fix:o} {path}`",
        path = .path.display()
    )]
    Foreign {
        path: PathBuf,
        owner: u32,
        me: u32,
        fix: u32,
    },
    /// Its metadata could not be read.
    #[error("cannot check {path}: {source}", path = .path.display())]
    Unreadable { path: PathBuf, source: io::Error },
}

/// Refuses a data dir that is not the running user's alone: the directory, and the admin
/// secret and database if they exist, must be owned by the effective user and not be
/// writable by group or others. On non-Unix platforms there is nothing to check.
pub fn check_private(data_dir: &Path) -> Result<(), NotPrivate> {
    check_one(data_dir, 0o700)?;
    for file in [admin_secret_path(data_dir), database_path(data_dir)] {
        if file.exists() {
            check_one(&file, 0o600)?;
        }
    }
    Ok(())
}

/// One path of [`check_private`]; `fix` is the mode the error suggests.
#[cfg(unix)]
fn check_one(path: &Path, fix: u32) -> Result<(), NotPrivate> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|source| NotPrivate::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(NotPrivate::Foreign {
            path: path.to_path_buf(),
            owner: meta.uid(),
            me,
            fix,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(NotPrivate::Writable {
            path: path.to_path_buf(),
            mode,
            fix,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_one(_path: &Path, _fix: u32) -> Result<(), NotPrivate> {
    Ok(())
}

/// Creates `dir` (and missing parents) readable by the user only (0700 on Unix). An
/// existing directory is left as it is.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
}

/// Writes `bytes` to `path`, readable by the user only (0600 on Unix), replacing any file
/// there. Atomic: the bytes go to a new private file next to `path`, are flushed to disk,
/// and that file is renamed over `path`, so a crash leaves either the old file or the
/// whole new one, and the secret is never readable by others, not even for a moment.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} does not name a file", path.display()),
        )
    })?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        crate::secret::random_hex(6)
    ));
    let written = write_new_private(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    // Make the rename itself durable (best effort: not every platform can sync a directory).
    #[cfg(unix)]
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Creates `path` (which must not exist) 0600, writes `bytes` and flushes them to disk.
fn write_new_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> PathBuf {
        std::env::temp_dir().join(format!("atm-data-dir-{}", crate::secret::random_hex(8)))
    }

    #[test]
    fn private_files_replace_atomically_and_leave_no_temporary_behind() {
        let dir = temp_dir().join("nested");
        create_private_dir(&dir).unwrap();
        let f = dir.join("secret");
        write_private_file(&f, b"one\n").unwrap();
        write_private_file(&f, b"two\n").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"two\n");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("secret")]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&f), 0o600);
            assert_eq!(mode(&dir), 0o700);
        }
        let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    }

    #[cfg(unix)]
    #[test]
    fn a_data_dir_or_secret_others_can_write_is_not_private() {
        use std::os::unix::fs::PermissionsExt;
        let chmod = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        let dir = temp_dir();
        create_private_dir(&dir).unwrap();
        write_private_file(&admin_secret_path(&dir), b"s\n").unwrap();
        check_private(&dir).unwrap();

        chmod(&dir, 0o770);
        let e = check_private(&dir).unwrap_err();
        assert!(matches!(e, NotPrivate::Writable { fix: 0o700, .. }), "{e}");
        assert!(
            e.to_string()
                .contains(&format!("chmod 700 {}", dir.display())),
            "{e}"
        );
        chmod(&dir, 0o755);
        check_private(&dir).unwrap();

        chmod(&admin_secret_path(&dir), 0o602);
        let e = check_private(&dir).unwrap_err();
        assert!(
            matches!(
                e,
                NotPrivate::Writable {
                    mode: 0o602,
                    fix: 0o600,
                    ..
                }
            ),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_path_without_a_file_name_is_refused() {
        let e = write_private_file(Path::new("/"), b"x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn the_flag_wins_and_names_the_files() {
        let d = resolve(Some(Path::new("/srv/atm"))).unwrap();
        assert_eq!(admin_secret_path(&d), Path::new("/srv/atm/admin_secret"));
        assert_eq!(database_path(&d), Path::new("/srv/atm/atmosphere.db"));
    }
}
