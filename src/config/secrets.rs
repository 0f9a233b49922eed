//! The files that hold secrets (`*_file` keys): read with a bound, and judged by who else may
//! read or write them, for the warnings the config and the accounts give. Nothing here ever
//! puts a secret's text into a message.

use std::path::Path;

use anyhow::{bail, Context};
use secrecy::SecretString;

/// The most a secret file may hold. An API secret is a few dozen bytes, a database or webhook
/// URL a few hundred; a path that names a device (`/dev/zero`) or a log by mistake would
/// otherwise be read until memory runs out.
pub(super) const MAX_SECRET_FILE_BYTES: usize = 4096;

pub(super) fn read_secret_file(path: &Path) -> anyhow::Result<SecretString> {
    use std::io::Read;
    let reading = || format!("reading secret file {}", path.display());
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(MAX_SECRET_FILE_BYTES as u64 + 1)
                .read_to_end(&mut bytes)
        })
        .with_context(reading)?;
    if bytes.len() > MAX_SECRET_FILE_BYTES {
        bail!(
            "secret file {} holds more than {} KiB: not a secret (is it the right file?)",
            path.display(),
            MAX_SECRET_FILE_BYTES / 1024
        );
    }
    // The text is never quoted: it is the secret, or part of it.
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("secret file {} is not UTF-8 text", path.display()))?;
    // Editors and `echo` add a final newline that is not part of the secret.
    Ok(SecretString::from(
        text.trim_end_matches(['\n', '\r']).to_owned(),
    ))
}

/// Who besides the owner may read or write a file, from its mode.
pub(super) struct Exposure {
    pub(super) mode: u32,
    pub(super) readable_by: Option<&'static str>,
    pub(super) writable_by: Option<&'static str>,
}

pub(super) fn exposure(path: &Path) -> Option<Exposure> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    let who = |group: u32, others: u32| match (mode & group != 0, mode & others != 0) {
        (true, true) => Some("group and others"),
        (true, false) => Some("group"),
        (false, true) => Some("others"),
        (false, false) => None,
    };
    let e = Exposure {
        mode,
        readable_by: who(0o040, 0o004),
        writable_by: who(0o020, 0o002),
    };
    (e.readable_by.is_some() || e.writable_by.is_some()).then_some(e)
}

/// The shipped unit runs as a DynamicUser, a UID that owns nothing: it can read a root-owned
/// file only when others may read it, so a readable secret file is the unit working, not a
/// mode to tighten. The advice is to hand the secret over as a credential, which only the
/// service can read: `key` is the config key that names the file, `credential` the name the
/// daemon reads the credential by (`api_secret`, or `api_secret_<name>` for an account).
pub(super) fn secret_file_warning(key: &str, credential: &str, path: &Path) -> Vec<String> {
    let Some(e) = exposure(path) else {
        return Vec::new();
    };
    let mut warnings = Vec::new();
    if let Some(who) = e.readable_by {
        warnings.push(format!(
            "{key} {} is readable by {who} (mode {:04o}): hand the secret over as a systemd \
             credential instead (LoadCredential={credential}:{} in the unit) and remove {key}",
            path.display(),
            e.mode,
            path.display()
        ));
    }
    if let Some(who) = e.writable_by {
        warnings.push(format!(
            "{key} {} is writable by {who} (mode {:04o}): whoever can write \
             it can replace the secret; make it writable by its owner only (chmod go-w)",
            path.display(),
            e.mode
        ));
    }
    warnings
}
