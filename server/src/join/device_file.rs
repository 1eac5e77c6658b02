//! The `--device-file`: this device's [`DeviceCredential`] for one mesh, as pretty JSON,
//! readable by the owner only (the key in it is as good as a password).

use crate::data_dir::write_private_file;
use atmosphere_shared::credential::DeviceCredential;
use std::io::Read;
use std::path::Path;

/// Largest device file we read: it holds four short strings.
const MAX_DEVICE_FILE_BYTES: u64 = 64 * 1024;

/// Reads the device file: `Ok(None)` if it does not exist yet (first join).
pub(super) fn load(path: &Path) -> Result<Option<DeviceCredential>, String> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(format!(
                "cannot read the device file {}: {e}",
                path.display()
            ))
        }
    };
    let mut text = String::new();
    file.take(MAX_DEVICE_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read the device file {}: {e}", path.display()))?;
    if text.len() as u64 > MAX_DEVICE_FILE_BYTES {
        return Err(format!(
            "the device file {} is too large to be a credential",
            path.display()
        ));
    }
    serde_json::from_str(&text).map(Some).map_err(|e| {
        format!(
            "the device file {} is not a device credential: {e}",
            path.display()
        )
    })
}

/// Writes the credential next to its final place and renames it over, so a crash never
/// leaves half a file; mode 0600.
pub(super) fn save(path: &Path, cred: &DeviceCredential) -> Result<(), String> {
    let fail = |e: std::io::Error| {
        format!(
            "cannot save the device credential to {}: {e}",
            path.display()
        )
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let text = serde_json::to_string_pretty(cred).expect("credential serialises");
    write_private_file(path, text.as_bytes()).map_err(fail)
}
