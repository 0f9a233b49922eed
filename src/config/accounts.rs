//! `[[accounts]]`: several provider accounts in one deployment (one per brand or region, say),
//! each with its API key, its secret and the apps it reports for; or, as every config written
//! before there were accounts, the one unnamed account of `[provider] api_key`, which reports
//! for every app. An app belongs to one account at most: its submissions are signed with that
//! account's key and secret, and an app in two would be reported twice, so that is refused.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::secrets::{read_secret_file, secret_file_warning};
use super::{app_ids, Outside, API_KEY_PLACEHOLDER};
use crate::domain::{AccountName, AppId};

/// One `[[accounts]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccount {
    name: String,
    api_key: Option<String>,
    api_secret: Option<SecretString>,
    api_secret_file: Option<PathBuf>,
    apps: Option<Vec<String>>,
}

impl RawAccount {
    pub(super) fn has_inline_secret(&self) -> bool {
        self.api_secret.is_some()
    }
}

/// The unnamed account's keys, as written in `[provider]`.
pub(super) struct ProviderKeys {
    pub api_key: Option<String>,
    pub api_secret: Option<SecretString>,
    pub api_secret_file: Option<PathBuf>,
}

/// One provider account, validated.
#[derive(Debug, Clone)]
pub struct Account {
    /// `None` for the unnamed account of `[provider] api_key`.
    pub name: Option<AccountName>,
    pub api_key: String,
    /// `None` until one of the four sources provides it: commands that talk to the provider
    /// ask for it through [`Account::secret`], so `history` or `migrate` work without.
    pub api_secret: Option<SecretString>,
    /// The apps it reports for; empty for the unnamed account, which reports for every app.
    pub apps: Vec<AppId>,
}

impl Account {
    pub fn secret(&self) -> anyhow::Result<&SecretString> {
        self.api_secret.as_ref().with_context(|| match &self.name {
            None => "provider.api_secret is not set: set provider.api_secret or \
                     provider.api_secret_file, the BACKFILL_REPORTER_API_SECRET environment \
                     variable, or the systemd credential api_secret"
                .to_owned(),
            Some(name) => format!(
                "the secret of account {name} is not set: set api_secret or api_secret_file in \
                 its [[accounts]] entry, the BACKFILL_REPORTER_API_SECRET_{} environment \
                 variable, or the systemd credential api_secret_{name}",
                name.env_suffix()
            ),
        })
    }

    /// The name as stored and shown (`None` for the unnamed account).
    pub fn name_str(&self) -> Option<&str> {
        self.name.as_ref().map(AccountName::as_str)
    }

    /// "account shop", or "the account" when it has no name: for log lines and errors.
    pub fn describe(&self) -> String {
        self.name
            .as_ref()
            .map_or_else(|| "the account".to_owned(), |n| format!("account {n}"))
    }

    fn reports_for(&self, app_id: &str) -> bool {
        self.name.is_none() || self.apps.iter().any(|a| a.as_str() == app_id)
    }
}

/// Every account of the deployment: either the one unnamed account, or the named ones.
#[derive(Debug, Clone)]
pub struct Accounts(Vec<Account>);

impl Accounts {
    pub fn iter(&self) -> impl Iterator<Item = &Account> {
        self.0.iter()
    }

    /// Whether the accounts come from `[[accounts]]` (else the one unnamed account).
    pub fn are_named(&self) -> bool {
        self.0.iter().any(|a| a.name.is_some())
    }

    /// The account that reports for `app_id`; `None` when no account lists it.
    pub fn of_app(&self, app_id: &str) -> Option<&Account> {
        self.0.iter().find(|a| a.reports_for(app_id))
    }

    /// The account stored as `name` with a submission (`None`: the unnamed one).
    pub fn get(&self, name: Option<&str>) -> Option<&Account> {
        self.0.iter().find(|a| a.name_str() == name)
    }

    /// The names, for a message that lists them.
    pub fn names(&self) -> String {
        let names: Vec<&str> = self.0.iter().filter_map(Account::name_str).collect();
        names.join(", ")
    }
}

/// The accounts from `[provider]` and `[[accounts]]`: the named ones when there are any (and
/// then `[provider]` may hold no key), else the unnamed one.
pub(super) fn accounts(
    keys: ProviderKeys,
    raw: Option<Vec<RawAccount>>,
    outside: &Outside,
    warnings: &mut Vec<String>,
) -> anyhow::Result<Accounts> {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(Accounts(vec![unnamed(keys, outside, warnings)?]));
    };
    if keys.api_key.is_some() || keys.api_secret.is_some() || keys.api_secret_file.is_some() {
        bail!(
            "provider.api_key (or its secret) and [[accounts]] are both set: with [[accounts]], \
             each account has its api_key and secret in its own entry; move them there and \
             remove them from [provider]"
        );
    }
    warn_unused_single_secrets(outside, warnings);
    let mut accounts = Vec::with_capacity(raw.len());
    for (i, entry) in raw.into_iter().enumerate() {
        let account = named(entry, outside, warnings)
            .with_context(|| format!("[[accounts]] entry {}", i + 1))?;
        accounts.push(account);
    }
    refuse_clashes(&accounts)?;
    Ok(Accounts(accounts))
}

/// `[provider] api_key` and its secret: the account of every config before `[[accounts]]`.
fn unnamed(
    keys: ProviderKeys,
    outside: &Outside,
    warnings: &mut Vec<String>,
) -> anyhow::Result<Account> {
    let api_key = outside
        .var("BACKFILL_REPORTER_API_KEY")
        .or(keys.api_key)
        .context("provider.api_key is not set (or BACKFILL_REPORTER_API_KEY), nor [[accounts]]")?;
    check_key(
        "provider.api_key",
        &api_key,
        "(or in BACKFILL_REPORTER_API_KEY)",
    )?;
    let source = SecretSource {
        key: "provider.api_secret",
        env: "BACKFILL_REPORTER_API_SECRET".to_owned(),
        credential: "api_secret".to_owned(),
    };
    let api_secret = source.read(keys.api_secret, keys.api_secret_file, outside, warnings)?;
    Ok(Account {
        name: None,
        api_key,
        api_secret,
        apps: Vec::new(),
    })
}

fn named(
    entry: RawAccount,
    outside: &Outside,
    warnings: &mut Vec<String>,
) -> anyhow::Result<Account> {
    let name = AccountName::parse(&entry.name).map_err(|e| anyhow::anyhow!("name: {e}"))?;
    let api_key = entry
        .api_key
        .with_context(|| format!("account {name}: api_key is not set"))?;
    check_key(&format!("account {name}: api_key"), &api_key, "")?;
    let source = SecretSource {
        key: "api_secret",
        env: format!("BACKFILL_REPORTER_API_SECRET_{}", name.env_suffix()),
        credential: format!("api_secret_{name}"),
    };
    let api_secret = source
        .read(entry.api_secret, entry.api_secret_file, outside, warnings)
        .with_context(|| format!("account {name}"))?;
    let apps = app_ids(entry.apps).map_err(|e| anyhow::anyhow!("account {name}: apps: {e}"))?;
    if apps.is_empty() {
        bail!("account {name}: apps is empty: list the appIds this account reports for");
    }
    Ok(Account {
        name: Some(name),
        api_key,
        api_secret,
        apps,
    })
}

/// A key that cannot be meant: empty, with control characters, or the example's placeholder.
fn check_key(what: &str, key: &str, elsewhere: &str) -> anyhow::Result<()> {
    if key.trim().is_empty() || key.chars().any(|c| c.is_control()) {
        bail!("{what} is empty or has control characters");
    }
    if key.trim().eq_ignore_ascii_case(API_KEY_PLACEHOLDER) {
        bail!(
            "{what} is still the example's placeholder {API_KEY_PLACEHOLDER:?}: put your \
             account's API key there {elsewhere}"
        );
    }
    Ok(())
}

/// Two accounts that share a name (as the environment spells it), or an app: either would
/// make one account's secret or reports another's.
fn refuse_clashes(accounts: &[Account]) -> anyhow::Result<()> {
    let mut names: BTreeMap<String, &AccountName> = BTreeMap::new();
    let mut owners: BTreeMap<&str, &AccountName> = BTreeMap::new();
    for account in accounts {
        let name = account.name.as_ref().expect("named accounts only");
        if let Some(other) = names.insert(name.env_suffix(), name) {
            bail!(
                "accounts {other} and {name} have one name as far as the environment is \
                 concerned (BACKFILL_REPORTER_API_SECRET_{}): rename one",
                name.env_suffix()
            );
        }
        for app in &account.apps {
            if let Some(other) = owners.insert(app.as_str(), name) {
                if other != name {
                    bail!(
                        "app {} is in two accounts, {other} and {name}: an app is reported by \
                         one account only; remove it from the apps of one of them",
                        crate::domain::excerpt::clean(app.as_str(), 32)
                    );
                }
            }
        }
    }
    Ok(())
}

/// With `[[accounts]]`, the single account's secret in the environment or as the credential
/// `api_secret` signs nothing: said once, so that nobody believes it is in use.
fn warn_unused_single_secrets(outside: &Outside, warnings: &mut Vec<String>) {
    for var in ["BACKFILL_REPORTER_API_KEY", "BACKFILL_REPORTER_API_SECRET"] {
        if outside.var(var).is_some() {
            warnings.push(format!(
                "{var} is set but [[accounts]] are configured: it is not used (each account's \
                 secret comes from BACKFILL_REPORTER_API_SECRET_<NAME>, the credential \
                 api_secret_<name>, or its entry)"
            ));
        }
    }
    if outside.credential("api_secret").is_some() {
        warnings.push(
            "the systemd credential api_secret is set but [[accounts]] are configured: it is \
             not used; load each account's secret as api_secret_<name> instead"
                .to_owned(),
        );
    }
}

/// Where one account's secret may come from, by precedence: the environment, the systemd
/// credential, the file, the config inline.
struct SecretSource {
    /// The config key, for messages: `provider.api_secret` or `api_secret`.
    key: &'static str,
    env: String,
    credential: String,
}

impl SecretSource {
    fn read(
        &self,
        inline: Option<SecretString>,
        file: Option<PathBuf>,
        outside: &Outside,
        warnings: &mut Vec<String>,
    ) -> anyhow::Result<Option<SecretString>> {
        let key = self.key;
        if inline.is_some() && file.is_some() {
            bail!("{key} and {key}_file are both set: keep one");
        }
        let secret = if let Some(secret) = outside.var(&self.env) {
            Some(SecretString::from(secret))
        } else if let Some(path) = outside.credential(&self.credential) {
            let what = format!("systemd credential {}", self.credential);
            Some(read_secret_file(&path).context(what)?)
        } else if let Some(file) = &file {
            warnings.extend(secret_file_warning(
                &format!("{key}_file"),
                &self.credential,
                file,
            ));
            Some(read_secret_file(file).with_context(|| format!("{key}_file"))?)
        } else {
            inline
        };
        if let Some(secret) = &secret {
            let s = secret.expose_secret();
            if s.is_empty() || s.chars().any(|c| c.is_control()) {
                bail!("{key} is empty or has control characters");
            }
        }
        Ok(secret)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{from_toml, Settings};
    use super::*;

    fn parse_with(text: &str, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Settings> {
        from_toml(text, Path::new("test.toml"), env)
    }

    fn parse(text: &str) -> anyhow::Result<Settings> {
        parse_with(text, &|_| None)
    }

    const TWO: &str = "[[accounts]]\nname = \"shop\"\napi_key = \"shopKey1\"\n\
        api_secret = \"shop-secret\"\napps = [\"demoShop\", \"demoRide\"]\n\
        [[accounts]]\nname = \"bank\"\napi_key = \"bankKey1\"\napps = [\"demoBank\"]\n";

    fn secret_of(s: &Settings, name: &str) -> String {
        let account = s.provider.accounts.get(Some(name)).unwrap();
        account.secret().unwrap().expose_secret().to_owned()
    }

    #[test]
    fn each_app_is_reported_by_its_own_account() {
        let s = parse(TWO).unwrap();
        let accounts = &s.provider.accounts;
        assert!(accounts.are_named());
        assert_eq!(accounts.of_app("demoRide").unwrap().api_key, "shopKey1");
        assert_eq!(accounts.of_app("demoBank").unwrap().api_key, "bankKey1");
        assert!(accounts.of_app("demoNone").is_none());
        assert_eq!(accounts.names(), "shop, bank");
        assert!(
            !format!("{s:?}").contains("shop-secret"),
            "no secret in Debug"
        );
    }

    #[test]
    fn the_single_provider_key_stays_one_unnamed_account_for_every_app() {
        let s = parse("[provider]\napi_key = \"bDqJFiq9\"\napi_secret = \"x1\"\n").unwrap();
        let accounts = &s.provider.accounts;
        assert!(!accounts.are_named());
        let account = accounts.of_app("anyApp1").unwrap();
        assert_eq!(
            (account.name_str(), account.api_key.as_str()),
            (None, "bDqJFiq9")
        );
        assert!(accounts.get(None).is_some());
    }

    #[test]
    fn an_accounts_secret_comes_from_its_variable_its_credential_its_file_or_inline() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bank_secret");
        std::fs::write(&file, "from-file\n").unwrap();
        let text = format!(
            "{}api_secret_file = {:?}\n",
            TWO,
            file.display().to_string()
        );
        assert_eq!(secret_of(&parse(&text).unwrap(), "bank"), "from-file");
        assert_eq!(secret_of(&parse(&text).unwrap(), "shop"), "shop-secret");
        std::fs::write(dir.path().join("api_secret_bank"), "from-cred\n").unwrap();
        let cred = dir.path().to_str().unwrap().to_owned();
        let with_cred = |n: &str| (n == "CREDENTIALS_DIRECTORY").then(|| cred.clone());
        assert_eq!(
            secret_of(&parse_with(&text, &with_cred).unwrap(), "bank"),
            "from-cred"
        );
        let with_env = |n: &str| match n {
            "CREDENTIALS_DIRECTORY" => Some(cred.clone()),
            "BACKFILL_REPORTER_API_SECRET_BANK" => Some("from-env".to_owned()),
            _ => None,
        };
        assert_eq!(
            secret_of(&parse_with(&text, &with_env).unwrap(), "bank"),
            "from-env"
        );
    }

    #[test]
    fn a_missing_secret_names_the_account_and_every_place_it_may_come_from() {
        let s = parse(TWO).unwrap();
        let err = format!(
            "{:#}",
            s.provider
                .accounts
                .get(Some("bank"))
                .unwrap()
                .secret()
                .unwrap_err()
        );
        assert!(err.contains("account bank"), "{err}");
        assert!(err.contains("BACKFILL_REPORTER_API_SECRET_BANK"), "{err}");
        assert!(err.contains("api_secret_bank"), "{err}");
    }

    #[test]
    fn an_app_in_two_accounts_is_refused_naming_both() {
        let text = TWO.replace(
            "apps = [\"demoBank\"]",
            "apps = [\"demoBank\", \"demoShop\"]",
        );
        let err = format!("{:#}", parse(&text).unwrap_err());
        assert!(
            err.contains("app demoShop is in two accounts, shop and bank"),
            "{err}"
        );
    }

    #[test]
    fn mistakes_in_an_entry_name_the_entry_and_the_key() {
        for (from, to, needle) in [
            (
                "name = \"bank\"",
                "name = \"2bank\"",
                "entry 2: name: account name",
            ),
            (
                "name = \"bank\"",
                "name = \"SHOP\"",
                "accounts shop and SHOP have one name",
            ),
            (
                "api_key = \"bankKey1\"\n",
                "",
                "account bank: api_key is not set",
            ),
            (
                "bankKey1",
                "YOUR_API_KEY",
                "account bank: api_key is still the example's placeholder",
            ),
            (
                "apps = [\"demoBank\"]",
                "apps = []",
                "account bank: apps is empty",
            ),
            (
                "apps = [\"demoBank\"]",
                "apps = [\"abc\"]",
                "account bank: apps: appId",
            ),
            (
                "api_secret = \"shop-secret\"",
                "api_secret = \"shop-secret\"\napi_secret_file = \"/x\"",
                "api_secret and api_secret_file are both set",
            ),
            (
                "apps = [\"demoBank\"]",
                "apps = [\"demoBank\"]\napi_kee = \"x\"",
                "api_kee",
            ),
        ] {
            let text = TWO.replace(from, to);
            let err = format!("{:#}", parse(&text).unwrap_err());
            assert!(err.contains(needle), "{to:?}: {err}");
            assert!(!err.contains("shop-secret"), "{err}");
        }
    }

    #[test]
    fn a_provider_key_beside_accounts_is_refused_and_unused_single_secrets_are_said() {
        let text = format!("[provider]\napi_key = \"bDqJFiq9\"\n{TWO}");
        let err = format!("{:#}", parse(&text).unwrap_err());
        assert!(
            err.contains("provider.api_key (or its secret) and [[accounts]] are both set"),
            "{err}"
        );
        let env = |n: &str| (n == "BACKFILL_REPORTER_API_SECRET").then(|| "old".to_owned());
        let warnings = parse_with(TWO, &env).unwrap().warnings;
        assert!(
            warnings.iter().any(|w| w
                .contains("BACKFILL_REPORTER_API_SECRET is set but [[accounts]] are configured")),
            "{warnings:?}"
        );
    }

    #[test]
    fn a_malformed_account_secret_is_never_echoed() {
        let text = "[[accounts]]\nname = \"shop\"\napi_key = \"k1234\"\napi_secret = 12345678\napps = [\"demoShop\"]\n";
        let err = format!("{:#}", parse(text).unwrap_err());
        assert!(!err.contains("12345678"), "{err}");
        assert!(err.contains("accounts.api_secret"), "{err}");
    }
}
