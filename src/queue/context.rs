//! What every task of a tick shares: the database, one signing client per account, and the
//! settings in force. Its own module so that planning ([`super::tick`]), sending
//! ([`super::sender`]) and pacing ([`super::pace`]) all take it from below.

use std::sync::Arc;

use crate::config::Settings;
use crate::db::Db;
use crate::provider::Clients;

/// What a cycle needs: the database, the provider and the settings in force.
#[derive(Clone, Debug)]
pub struct Context {
    /// The database's pool, behind the handle every statement goes through.
    pub pool: Db,
    /// One signing client per account.
    pub clients: Clients,
    pub settings: Arc<Settings>,
    /// `host:pid`, stored with each run so that operators running several instances can tell.
    pub instance: String,
}

impl Context {
    /// The one way to build a context: the provider clients from the settings, over `pool`.
    pub fn new(settings: Settings, pool: impl Into<Db>, instance: String) -> anyhow::Result<Self> {
        Ok(Self {
            clients: Clients::new(&settings.provider)?,
            pool: pool.into(),
            settings: Arc::new(settings),
            instance,
        })
    }
}
