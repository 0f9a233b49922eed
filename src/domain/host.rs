//! Whether a host is this machine. One rule for every place that lets traffic go unencrypted
//! because it never leaves the machine: `http://` for `provider.base_url` and the alarm
//! webhook, and a database reached without TLS by default.

use std::net::IpAddr;

/// Whether `host` names this machine: `localhost` (in any case) or a loopback address,
/// IPv4 (`127.0.0.0/8`), IPv6 (`::1`) or IPv4-mapped (`::ffff:127.0.0.1`), bare or in the
/// brackets a URL puts around IPv6. A name that only ends in `localhost` is not: nothing makes
/// a resolver send it here. (A Unix socket is not a host; the database checks it itself.)
pub fn is_loopback(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<IpAddr>().is_ok_and(|ip| match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn localhost_and_every_loopback_address_are_this_machine() {
        for host in [
            "localhost",
            "LOCALHOST",
            "LocalHost",
            "127.0.0.1",
            "127.0.1.1",
            "127.255.255.254",
            "::1",
            "[::1]",
            "0:0:0:0:0:0:0:1",
            "::ffff:127.0.0.1",
            "[::ffff:127.0.0.1]",
            // How the url crate writes the address above.
            "[::ffff:7f00:1]",
        ] {
            assert!(is_loopback(host), "{host}");
        }
    }

    #[test]
    fn other_hosts_names_and_malformed_brackets_are_not() {
        for host in [
            "",
            "10.0.0.5",
            "0.0.0.0",
            "128.0.0.1",
            "::",
            "[::]",
            "2001:db8::1",
            "[2001:db8::1]",
            "[::ffff:10.0.0.5]",
            "db.example.com",
            "localhost.example.com",
            "foo.localhost",
            "localhost.",
            "127.0.0.1.nip.io",
            "[::1",
            "::1]",
            "[[::1]]",
            // A Unix socket directory is the database's own rule, not a host.
            "/run/postgresql",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
