//! Country names for mobile country codes, so that operators read "Indonesia" rather than
//! "510". The list is the ITU-T E.212 annex, shipped as data (`data/mcc-e212.tsv`) and compiled
//! into the binary; this module only parses and looks it up. It does no I/O.

use std::collections::HashMap;
use std::sync::LazyLock;

/// One code of the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Country {
    pub mcc: &'static str,
    /// A short common name that fits a table column ("United Kingdom").
    pub name: &'static str,
    /// The name as ITU publishes it ("United Kingdom of Great Britain and Northern Ireland").
    pub itu_name: &'static str,
}

/// The data file, verbatim: `mcc<TAB>short name<TAB>ITU name`, `#` starts a comment line.
pub const DATA: &str = include_str!("../../data/mcc-e212.tsv");

static BY_CODE: LazyLock<HashMap<&'static str, Country>> = LazyLock::new(|| {
    parse(DATA)
        .expect("data/mcc-e212.tsv is well-formed (checked by the mcc tests)")
        .into_iter()
        .map(|c| (c.mcc, c))
        .collect()
});

/// The country or area of a three-digit MCC; `None` for a code the list does not have.
pub fn lookup(mcc: &str) -> Option<Country> {
    BY_CODE.get(mcc).copied()
}

/// The short name, or "unknown" for a code not in the list.
pub fn name(mcc: &str) -> &'static str {
    lookup(mcc).map_or("unknown", |c| c.name)
}

/// Parses the data file; an error names the line, so that a bad edit fails the tests clearly.
pub fn parse(text: &'static str) -> Result<Vec<Country>, String> {
    let mut out: Vec<Country> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&'static str> = line.split('\t').collect();
        let [mcc, name, itu_name] = fields[..] else {
            return Err(format!(
                "line {}: expected 3 tab-separated fields, found {}",
                i + 1,
                fields.len()
            ));
        };
        if mcc.len() != 3 || !mcc.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("line {}: {mcc:?} is not three digits", i + 1));
        }
        if name.trim().is_empty() || itu_name.trim().is_empty() {
            return Err(format!("line {}: a name is empty", i + 1));
        }
        if let Some(prev) = out.last() {
            if prev.mcc >= mcc {
                return Err(format!(
                    "line {}: {mcc} is not after {} (keep the list sorted, each code once)",
                    i + 1,
                    prev.mcc
                ));
            }
        }
        out.push(Country {
            mcc,
            name,
            itu_name,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MCCs the provider's pages show: `"mcc":460` in the backfillRate request example and
    /// `"mcc": 460` in the SMS leg of the orderId-record response example.
    const PROVIDER_PAGE_MCCS: [&str; 1] = ["460"];

    #[test]
    fn the_data_file_parses_and_has_the_whole_list() {
        let list = parse(DATA).unwrap();
        // The 2017 annex lists 238 codes; 001 and 999 are added.
        assert_eq!(list.len(), 240);
        for c in &list {
            assert!(c.name.chars().count() <= 25, "{c:?}: short name too long");
        }
    }

    #[test]
    fn every_mcc_the_provider_pages_mention_resolves() {
        for mcc in PROVIDER_PAGE_MCCS {
            assert_eq!(lookup(mcc).map(|c| c.name), Some("China"), "{mcc}");
        }
        // And, where the pages are at hand (a checkout next to shared/), every three-digit
        // number written as an mcc value in them.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/provider-docs");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let mut seen = 0;
        for entry in entries.flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            for mcc in mccs_in(&text) {
                seen += 1;
                assert!(
                    lookup(&mcc).is_some(),
                    "{}: mcc {mcc} is not in data/mcc-e212.tsv",
                    entry.path().display()
                );
            }
        }
        assert!(
            seen >= 2,
            "the pages' two examples were not found in {dir:?}"
        );
    }

    /// The three-digit values after `"mcc"` and a colon, as the pages write them.
    fn mccs_in(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (at, _) in text.match_indices("\"mcc\"") {
            let rest = text[at + 5..].trim_start();
            let Some(rest) = rest.strip_prefix(':') else {
                continue;
            };
            let value: String = rest
                .trim_start()
                .trim_start_matches('"')
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if value.len() == 3 {
                out.push(value);
            }
        }
        out
    }

    #[test]
    fn codes_known_to_operators_have_their_names() {
        for (mcc, name) in [
            ("001", "Test network"),
            ("234", "United Kingdom"),
            ("310", "United States"),
            ("404", "India"),
            ("450", "South Korea"),
            ("467", "North Korea"),
            ("510", "Indonesia"),
            ("659", "South Sudan"),
            ("724", "Brazil"),
        ] {
            assert_eq!(super::name(mcc), name, "{mcc}");
        }
        assert_eq!(name("000"), "unknown");
        assert_eq!(
            lookup("234").unwrap().itu_name,
            "United Kingdom of Great Britain and Northern Ireland"
        );
    }

    #[test]
    fn a_bad_line_is_reported_with_its_number() {
        assert!(parse("460\tChina\n").unwrap_err().contains("line 1"));
        assert!(parse("46\tX\tY\n").unwrap_err().contains("three digits"));
        assert!(parse("461\tA\tA\n460\tB\tB\n")
            .unwrap_err()
            .contains("sorted"));
    }
}
