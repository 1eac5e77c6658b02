//! SQLite persistence of the host: the mesh identity (name + Ed25519 key), invites (token
//! hashes only) and member devices (credential hashes only). Times are stored as Unix
//! seconds ([`crate::clock`]).
//!
//! One `rusqlite::Connection` in WAL mode behind a mutex. Every call from async code goes
//! through [`Store::call`], which runs it on tokio's blocking pool so a slow disk never stalls
//! the reactor. The schema is versioned with `PRAGMA user_version`; [`Store::open`] migrates.
//!
//! Removing a device deletes its row, so its key stops working at the next check; each
//! device keeps the id of the invite it joined with (`devices.invite_id`), so revoking an
//! invite can remove the devices it enrolled ([`revoke_invite`]).
//!
//! Redeeming an invite ([`redeem_invite`]) is one `IMMEDIATE` transaction that checks
//! revocation, expiry and the use limit, bumps the use count and inserts the device, so two
//! phones racing for the last use of an invite cannot both get in.

use crate::clock::now_secs;
use anyhow::Context;
use ed25519_dalek::SigningKey;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Current schema version (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 2;

/// Migration steps; entry `i` upgrades from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE mesh (
        id          INTEGER PRIMARY KEY CHECK (id = 1),
        name        TEXT    NOT NULL,
        secret_key  BLOB    NOT NULL,
        created_at  INTEGER NOT NULL
    );
    CREATE TABLE invites (
        id          TEXT    PRIMARY KEY,
        token_hash  TEXT    NOT NULL UNIQUE,
        label       TEXT,
        created_at  INTEGER NOT NULL,
        expires_at  INTEGER NOT NULL,
        max_uses    INTEGER,
        uses        INTEGER NOT NULL DEFAULT 0,
        revoked     INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE devices (
        id          TEXT    PRIMARY KEY,
        name        TEXT    NOT NULL,
        platform    TEXT    NOT NULL,
        key_hash    TEXT    NOT NULL,
        invite_id   TEXT,
        joined_at   INTEGER NOT NULL,
        last_seen   INTEGER,
        last_path   TEXT
    );
"#,
    // Version 2: devices prove an X25519 static key in the mesh handshake. A device of
    // version 1 has only `key_hash` (its bearer key) until its first rejoin stores its
    // static key and retires the bearer key (`key_hash` = '').
    r#"
    ALTER TABLE devices ADD COLUMN static_key TEXT;
"#,
];

/// The mesh's identity as stored.
#[derive(Clone)]
pub struct MeshRecord {
    pub name: String,
    pub signing_key: SigningKey,
}

/// A new invite to store (the token itself is never stored).
#[derive(Debug, Clone)]
pub struct NewInvite {
    pub id: String,
    pub token_hash: String,
    pub label: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub max_uses: Option<u32>,
}

/// A stored invite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteRow {
    pub id: String,
    pub label: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub max_uses: Option<u32>,
    pub uses: u32,
    pub revoked: bool,
}

/// A device to create when an invite is redeemed.
#[derive(Debug, Clone)]
pub struct NewDevice {
    pub id: String,
    pub name: String,
    pub platform: String,
    /// The X25519 static public key the device proved in its handshake (base64url).
    pub static_key: String,
    pub joined_at: i64,
    pub path: String,
}

/// A stored device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    pub id: String,
    pub name: String,
    pub platform: String,
    /// The X25519 static public key it proves in every handshake (base64url); `None` for a
    /// device of an earlier version that has not rejoined since.
    pub static_key: Option<String>,
    /// SHA-256 of the bearer key of an earlier version, until the device's static key is
    /// stored.
    pub key_hash: Option<String>,
    /// The invite it joined with.
    pub invite_id: Option<String>,
    pub joined_at: i64,
    pub last_seen: Option<i64>,
    pub last_path: Option<String>,
}

/// What revoking an invite did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// No invite has this id.
    Unknown,
    /// The invite is revoked; with these devices (the ones it enrolled) removed, when asked.
    Done { removed_devices: Vec<String> },
}

/// Why an invite could not be redeemed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedeemError {
    /// No invite has this token hash.
    Unknown,
    Revoked,
    Expired,
    Exhausted,
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

impl Store {
    /// Opens (creating if needed) `path`, enables WAL and a busy timeout, and migrates the
    /// schema. Blocking: call it at startup, before serving.
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        // The database holds the mesh's private key: create it readable by the user only
        // (SQLite gives its -wal/-shm files the same mode).
        if !path.exists() {
            crate::data_dir::write_private_file(path, b"")
                .with_context(|| format!("cannot create database {}", path.display()))?;
        }
        let conn = Connection::open(path)
            .with_context(|| format!("cannot open database {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a `joined` answer promises the membership survives even a power cut.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&conn)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` with the connection on the blocking thread pool.
    pub async fn call<R, F>(&self, f: F) -> anyhow::Result<R>
    where
        F: FnOnce(&mut Connection) -> anyhow::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock poisons it; the connection itself is still
            // consistent (SQLite rolls back unfinished transactions), so keep using it.
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .context("database task failed")?
    }

    /// Runs `f` on the calling thread (unit tests only; async code uses [`Store::call`]).
    #[cfg(test)]
    pub fn call_blocking<R>(
        &self,
        f: impl FnOnce(&mut Connection) -> anyhow::Result<R>,
    ) -> anyhow::Result<R> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }
}

fn migrate(conn: &Connection) -> anyhow::Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        anyhow::bail!(
            "the database has schema version {version}, newer than this binary understands \
             ({SCHEMA_VERSION}); use a newer atmosphere"
        );
    }
    for (v, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)
            .with_context(|| format!("schema migration {v} failed"))?;
        tx.pragma_update(None, "user_version", v as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

/// Loads the mesh identity, creating it (new Ed25519 key from the OS CSPRNG) on first start.
/// `name` (from `--mesh-name`) renames an existing mesh; without it a new mesh is "Home Mesh".
pub fn load_or_create_mesh(
    conn: &mut Connection,
    name: Option<&str>,
) -> anyhow::Result<MeshRecord> {
    let row: Option<(String, Vec<u8>)> = conn
        .query_row("SELECT name, secret_key FROM mesh WHERE id = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    match row {
        Some((stored_name, key)) => {
            let bytes: [u8; 32] = key.as_slice().try_into().map_err(|_| {
                anyhow::anyhow!("stored mesh key has {} bytes, expected 32", key.len())
            })?;
            let mut rec = MeshRecord {
                name: stored_name,
                signing_key: SigningKey::from_bytes(&bytes),
            };
            if let Some(n) = name {
                if n != rec.name {
                    conn.execute("UPDATE mesh SET name = ?1 WHERE id = 1", params![n])?;
                    rec.name = n.to_string();
                }
            }
            Ok(rec)
        }
        None => {
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            let name = name.unwrap_or("Home Mesh").to_string();
            conn.execute(
                "INSERT INTO mesh (id, name, secret_key, created_at) VALUES (1, ?1, ?2, ?3)",
                params![name, key.to_bytes().to_vec(), now_secs()],
            )?;
            Ok(MeshRecord {
                name,
                signing_key: key,
            })
        }
    }
}

/// Stores a new invite.
pub fn insert_invite(conn: &mut Connection, inv: &NewInvite) -> anyhow::Result<()> {
    conn.execute(
        "INSERT INTO invites (id, token_hash, label, created_at, expires_at, max_uses)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            inv.id,
            inv.token_hash,
            inv.label,
            inv.created_at,
            inv.expires_at,
            inv.max_uses
        ],
    )?;
    Ok(())
}

/// Redeems one use of the invite with `token_hash` and creates `device`, atomically.
/// Returns the invite id. The outer `Result` is a database failure, the inner a refusal.
pub fn redeem_invite(
    conn: &mut Connection,
    token_hash: &str,
    now: i64,
    device: &NewDevice,
) -> anyhow::Result<Result<String, RedeemError>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let row: Option<(String, i64, Option<u32>, u32, bool)> = tx
        .query_row(
            "SELECT id, expires_at, max_uses, uses, revoked FROM invites WHERE token_hash = ?1",
            params![token_hash],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?;
    let Some((id, expires_at, max_uses, uses, revoked)) = row else {
        return Ok(Err(RedeemError::Unknown));
    };
    if revoked {
        return Ok(Err(RedeemError::Revoked));
    }
    if now >= expires_at {
        return Ok(Err(RedeemError::Expired));
    }
    if max_uses.is_some_and(|m| uses >= m) {
        return Ok(Err(RedeemError::Exhausted));
    }
    tx.execute(
        "UPDATE invites SET uses = uses + 1 WHERE id = ?1",
        params![id],
    )?;
    tx.execute(
        "INSERT INTO devices (id, name, platform, key_hash, static_key, invite_id, joined_at, last_seen, last_path)
         VALUES (?1, ?2, ?3, '', ?4, ?5, ?6, ?6, ?7)",
        params![device.id, device.name, device.platform, device.static_key, id, device.joined_at, device.path],
    )?;
    tx.commit()?;
    Ok(Ok(id))
}

/// Whether an invite has this token hash (whatever its state): a read only, for turning an
/// unknown token away without a write transaction.
pub fn invite_known(conn: &mut Connection, token_hash: &str) -> anyhow::Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM invites WHERE token_hash = ?1",
            params![token_hash],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Looks a device up by id.
pub fn get_device(conn: &mut Connection, id: &str) -> anyhow::Result<Option<DeviceRow>> {
    Ok(conn
        .query_row(
            "SELECT id, name, platform, key_hash, invite_id, joined_at, last_seen, last_path, static_key FROM devices WHERE id = ?1",
            params![id],
            device_from_row,
        )
        .optional()?)
}

/// Stores the static key of a device of an earlier version at its first rejoin and retires
/// its bearer key, in one statement. False when the device has a static key already (or
/// is gone): the bearer key no longer works then.
pub fn upgrade_device_key(
    conn: &mut Connection,
    id: &str,
    static_key: &str,
) -> anyhow::Result<bool> {
    Ok(conn.execute(
        "UPDATE devices SET static_key = ?2, key_hash = '' WHERE id = ?1 AND static_key IS NULL",
        params![id, static_key],
    )? > 0)
}

/// Records that a device was seen now on `path`.
pub fn touch_device(conn: &mut Connection, id: &str, now: i64, path: &str) -> anyhow::Result<()> {
    conn.execute(
        "UPDATE devices SET last_seen = ?2, last_path = ?3 WHERE id = ?1",
        params![id, now, path],
    )?;
    Ok(())
}

/// Deletes a device: its key is refused from the next check on. Returns false when no
/// device has this id.
pub fn delete_device(conn: &mut Connection, id: &str) -> anyhow::Result<bool> {
    Ok(conn.execute("DELETE FROM devices WHERE id = ?1", params![id])? > 0)
}

/// Marks an invite revoked and, with `remove_devices`, deletes the devices it enrolled, in
/// one transaction.
pub fn revoke_invite(
    conn: &mut Connection,
    id: &str,
    remove_devices: bool,
) -> anyhow::Result<Revoked> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if tx.execute("UPDATE invites SET revoked = 1 WHERE id = ?1", params![id])? == 0 {
        return Ok(Revoked::Unknown);
    }
    let mut removed_devices = Vec::new();
    if remove_devices {
        let mut st = tx.prepare("DELETE FROM devices WHERE invite_id = ?1 RETURNING id")?;
        removed_devices = st
            .query_map(params![id], |r| r.get::<_, String>(0))?
            .collect::<Result<_, _>>()?;
        drop(st);
    }
    tx.commit()?;
    Ok(Revoked::Done { removed_devices })
}

/// All invites, newest first.
pub fn list_invites(conn: &mut Connection) -> anyhow::Result<Vec<InviteRow>> {
    let mut st = conn.prepare(
        "SELECT id, label, created_at, expires_at, max_uses, uses, revoked
         FROM invites ORDER BY created_at DESC, rowid DESC",
    )?;
    let rows = st.query_map([], |r| {
        Ok(InviteRow {
            id: r.get(0)?,
            label: r.get(1)?,
            created_at: r.get(2)?,
            expires_at: r.get(3)?,
            max_uses: r.get(4)?,
            uses: r.get(5)?,
            revoked: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// All devices, in join order.
pub fn list_devices(conn: &mut Connection) -> anyhow::Result<Vec<DeviceRow>> {
    let mut st = conn.prepare(
        "SELECT id, name, platform, key_hash, invite_id, joined_at, last_seen, last_path, static_key
         FROM devices ORDER BY joined_at, rowid",
    )?;
    let rows = st.query_map([], device_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn device_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceRow> {
    Ok(DeviceRow {
        id: r.get(0)?,
        name: r.get(1)?,
        platform: r.get(2)?,
        key_hash: r
            .get::<_, String>(3)
            .map(|h| (!h.is_empty()).then_some(h))?,
        invite_id: r.get(4)?,
        joined_at: r.get(5)?,
        last_seen: r.get(6)?,
        last_path: r.get(7)?,
        static_key: r.get(8)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile_dir::Dir, Store) {
        let d = tempfile_dir::Dir::new();
        let s = Store::open(&d.0.join("t.db")).unwrap();
        (d, s)
    }

    /// Minimal temp dir without a dev-dependency.
    mod tempfile_dir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let p = std::env::temp_dir()
                    .join(format!("atm-store-{}", crate::secret::random_hex(8)));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn dev(id: &str) -> NewDevice {
        NewDevice {
            id: id.into(),
            name: "Pixel".into(),
            platform: "browser".into(),
            static_key: format!("key-{id}"),
            joined_at: 10,
            path: "local".into(),
        }
    }

    #[test]
    fn mesh_identity_is_stable_and_renamable() {
        let (_d, s) = store();
        let a = s.call_blocking(|c| load_or_create_mesh(c, None)).unwrap();
        let b = s
            .call_blocking(|c| load_or_create_mesh(c, Some("Cabin")))
            .unwrap();
        assert_eq!(a.signing_key.to_bytes(), b.signing_key.to_bytes());
        assert_eq!(a.name, "Home Mesh");
        assert_eq!(b.name, "Cabin");
    }

    #[test]
    fn redeem_checks_use_limit_expiry_and_revocation() {
        let (_d, s) = store();
        s.call_blocking(|c| {
            let inv = |id: &str, hash: &str, exp, max| NewInvite {
                id: id.into(),
                token_hash: hash.into(),
                label: None,
                created_at: 0,
                expires_at: exp,
                max_uses: max,
            };
            insert_invite(c, &inv("a", "ha", 100, Some(1)))?;
            insert_invite(c, &inv("b", "hb", 5, None))?;
            insert_invite(c, &inv("r", "hr", 100, None))?;
            assert_eq!(redeem_invite(c, "ha", 10, &dev("d1"))?, Ok("a".to_string()));
            assert_eq!(
                redeem_invite(c, "ha", 10, &dev("d2"))?,
                Err(RedeemError::Exhausted)
            );
            assert_eq!(
                redeem_invite(c, "hb", 10, &dev("d3"))?,
                Err(RedeemError::Expired)
            );
            assert_eq!(
                revoke_invite(c, "r", false)?,
                Revoked::Done {
                    removed_devices: vec![]
                }
            );
            assert_eq!(
                redeem_invite(c, "hr", 10, &dev("d4"))?,
                Err(RedeemError::Revoked)
            );
            assert_eq!(
                redeem_invite(c, "zz", 10, &dev("d5"))?,
                Err(RedeemError::Unknown)
            );
            assert_eq!(list_devices(c)?.len(), 1);
            assert_eq!(
                list_invites(c)?.iter().find(|i| i.id == "a").unwrap().uses,
                1
            );
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn a_version_1_device_keeps_its_bearer_key_until_its_static_key_is_stored() {
        let d = tempfile_dir::Dir::new();
        let path = d.0.join("v1.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
            c.execute(
                "INSERT INTO devices (id, name, platform, key_hash, joined_at) VALUES ('d1', 'P', 'cli', 'h1', 5)",
                [],
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        let row = s.call_blocking(|c| get_device(c, "d1")).unwrap().unwrap();
        assert_eq!(
            (row.key_hash.as_deref(), row.static_key),
            (Some("h1"), None)
        );
        assert!(s
            .call_blocking(|c| upgrade_device_key(c, "d1", "k1"))
            .unwrap());
        let row = s.call_blocking(|c| get_device(c, "d1")).unwrap().unwrap();
        assert_eq!(
            (row.key_hash, row.static_key.as_deref()),
            (None, Some("k1"))
        );
        // Once a static key is stored, a bearer key cannot replace it.
        assert!(!s
            .call_blocking(|c| upgrade_device_key(c, "d1", "k2"))
            .unwrap());
        assert!(!s
            .call_blocking(|c| upgrade_device_key(c, "nope", "k2"))
            .unwrap());
    }

    #[test]
    fn revoking_can_remove_the_devices_an_invite_enrolled() {
        let (_d, s) = store();
        s.call_blocking(|c| {
            for (id, hash) in [("a", "ha"), ("b", "hb")] {
                insert_invite(
                    c,
                    &NewInvite {
                        id: id.into(),
                        token_hash: hash.into(),
                        label: None,
                        created_at: 0,
                        expires_at: 100,
                        max_uses: None,
                    },
                )?;
            }
            redeem_invite(c, "ha", 10, &dev("a1"))?.unwrap();
            redeem_invite(c, "ha", 10, &dev("a2"))?.unwrap();
            redeem_invite(c, "hb", 10, &dev("b1"))?.unwrap();
            assert_eq!(
                get_device(c, "a1")?.unwrap().invite_id.as_deref(),
                Some("a")
            );
            assert_eq!(revoke_invite(c, "zz", true)?, Revoked::Unknown);
            let Revoked::Done {
                mut removed_devices,
            } = revoke_invite(c, "a", true)?
            else {
                panic!("invite a exists");
            };
            removed_devices.sort();
            assert_eq!(removed_devices, vec!["a1", "a2"]);
            let left: Vec<String> = list_devices(c)?.into_iter().map(|d| d.id).collect();
            assert_eq!(left, vec!["b1"]);
            assert!(delete_device(c, "b1")?);
            assert!(!delete_device(c, "b1")?);
            assert!(get_device(c, "b1")?.is_none());
            Ok(())
        })
        .unwrap();
    }
}
