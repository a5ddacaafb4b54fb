//! The cluster key: 32 random bytes, kept as 64 hex digits in a file only its owner may read
//! (default /etc/crs/key). migrate and restartd prove they know it without ever sending it.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub const DEFAULT_KEY: &str = "/etc/crs/key";

/// Writes a new random key to `path` (mode 0600), creating its directory (0700) if needed.
/// Refuses to overwrite an existing key.
pub fn generate(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    if p.exists() {
        return Err(format!("{path} exists; remove it first to make a new key (every node needs the same key)"));
    }
    if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    }
    let key: [u8; 32] = super::random().map_err(|e| format!("getrandom: {e}"))?;
    let text: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let mut f =
        fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(p).map_err(|e| format!("{path}: {e}"))?;
    writeln!(f, "{text}").and_then(|_| f.sync_all()).map_err(|e| format!("{path}: {e}"))?;
    Ok(())
}

/// Reads a key file; refuses one that others may read (as ssh does), or that is malformed.
pub fn load(path: &str) -> Result<[u8; 32], String> {
    let md = fs::metadata(path).map_err(|e| format!("key {path}: {e}; make one with 'crs keygen'"))?;
    if md.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "key {path} is readable by others (mode {:o}); chmod 600 it",
            md.permissions().mode() & 0o777
        ));
    }
    let text = fs::read_to_string(path).map_err(|e| format!("key {path}: {e}"))?;
    parse(text.trim()).ok_or_else(|| format!("key {path} is not 64 hex digits; make one with 'crs keygen'"))
}

fn parse(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_then_load() {
        let dir = std::env::temp_dir().join(format!("crs-key-test.{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("sub/key");
        let p = path.to_str().unwrap();
        generate(p).unwrap();
        let k = load(p).unwrap();
        assert_ne!(k, [0u8; 32]);
        assert!(generate(p).is_err(), "must not overwrite a key");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load(p).unwrap_err().contains("readable by others"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn malformed_keys() {
        assert!(parse("zz").is_none());
        assert!(parse(&"g".repeat(64)).is_none());
        assert_eq!(parse(&"01".repeat(32)), Some([1u8; 32]));
    }
}
