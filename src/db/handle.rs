//! [`Db`] and its transactions, [`Tx`]: the one way the product's statements reach
//! PostgreSQL. Both are sqlx executors, so a call site reads as it would on a pool
//! (`query.fetch_all(db)`, `query.execute(&mut *tx)`); only this folder holds the pool, and
//! `clippy.toml` forbids sqlx's pool, connection and transaction types anywhere else, so no
//! statement can go around them.
//!
//! What they do depends on `database.pooler`:
//!
//! - `"none"` and `"session"`: a statement goes to the pool exactly as sqlx sends it (a named
//!   statement, prepared once per connection and kept), a transaction is a plain `BEGIN`.
//! - `"transaction"`: the pooler hands the server connection to another client when a
//!   transaction ends, so nothing may outlive one. Every statement runs inside a transaction:
//!   a `Db` statement in one of its own, opened with [`Setup`]'s `BEGIN; SET LOCAL …` (one
//!   round trip) and committed; a `Tx` statement in the caller's, opened the same way. Each goes
//!   out as the *unnamed* statement: sqlx sends Parse/Describe/Sync, then Bind/Execute/Sync,
//!   and only inside a transaction are both sure to reach the same server connection. Named
//!   statements would need a Close before the transaction ends (a round trip each) and save
//!   nothing, since none could be used again. Those sqlx names by itself (a `describe`, its
//!   type look-ups) are closed before the transaction ends, and a connection that still knows
//!   one when it is handed back (its transaction never reached its end) is closed, not reused.

use std::fmt;
use std::sync::{Arc, RwLock};

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt, TryFutureExt, TryStreamExt};
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArguments, PgListener, PgQueryResult, PgRow, PgStatement, PgTypeInfo};
use sqlx::{Connection, Describe, Either, Execute, Executor, PgConnection, PgPool, Postgres};

use crate::config::Pooler;

/// What bounds a transaction's or a session's time, as SQL: `BEGIN; SET LOCAL …` that opens
/// every transaction through a transaction pooler, or the `SET …` that a session-mode pooler's
/// connection runs once. Shared by every clone of a [`Db`] and by the pool's connect hook, so
/// that a reload that changes `statement_timeout` reaches them all.
#[derive(Clone, Default)]
pub(super) struct Setup(Arc<RwLock<Arc<str>>>);

impl Setup {
    pub(super) fn new(sql: String) -> Self {
        Self(Arc::new(RwLock::new(sql.into())))
    }

    pub(super) fn sql(&self) -> Arc<str> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn replace(&self, sql: String) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = sql.into();
    }
}

/// The database, as every module reaches it; cheap to clone.
#[derive(Clone)]
pub struct Db {
    pub(super) pool: PgPool,
    pub(super) pooler: Pooler,
    pub(super) setup: Setup,
    /// `database.direct_url` (with a pooler): migrations, the index build and `LISTEN`.
    pub(super) direct: Option<Arc<Db>>,
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The pool's Debug shows sizes, never the connect options (which hold the password).
        f.debug_struct("Db")
            .field("pooler", &self.pooler)
            .field("pool", &self.pool)
            .field("direct", &self.direct.is_some())
            .finish()
    }
}

/// A pool of a server session of its own (`database.pooler = "none"`): for tests and
/// benchmarks, which make their pools themselves.
impl From<PgPool> for Db {
    fn from(pool: PgPool) -> Self {
        Self {
            pool,
            pooler: Pooler::None,
            setup: Setup::default(),
            direct: None,
        }
    }
}

impl Db {
    pub fn pooler(&self) -> Pooler {
        self.pooler
    }

    /// A transaction, opened for the pooler: through a transaction pooler, with the statement
    /// and idle timeouts set for it alone.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        let tx = match self.pooler {
            Pooler::Transaction => self.pool.begin_with(self.setup.sql().to_string()).await,
            Pooler::None | Pooler::Session => self.pool.begin().await,
        }
        .map_err(|e| super::suspect(self.pooler, e))?;
        Ok(Tx {
            tx,
            pooler: self.pooler,
        })
    }

    /// Whether `NOTIFY` can reach this instance: not through a transaction pooler, whose
    /// server connections serve other clients between transactions, unless `direct_url` is set.
    pub fn can_listen(&self) -> bool {
        self.pooler != Pooler::Transaction || self.direct.is_some()
    }

    /// Listens on `channel` and calls `heard` for each notification, until the connection
    /// fails. Refuses what [`Db::can_listen`] refuses: a `LISTEN` that would hear nothing.
    pub async fn listen(&self, channel: &str, mut heard: impl FnMut()) -> anyhow::Result<()> {
        let pool = match (&self.direct, self.pooler) {
            (Some(direct), _) => &direct.pool,
            (None, Pooler::Transaction) => {
                anyhow::bail!("no LISTEN through a transaction pooler without database.direct_url")
            }
            (None, Pooler::None | Pooler::Session) => &self.pool,
        };
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(channel).await?;
        loop {
            listener.recv().await?;
            heard();
        }
    }

    /// Closes every connection, the direct ones too.
    pub async fn close(&self) {
        if let Some(direct) = &self.direct {
            direct.pool.close().await;
        }
        self.pool.close().await;
    }

    /// Runs one statement in a transaction of its own, through a transaction pooler.
    async fn alone<'q, E>(&self, query: E) -> Result<Vec<Either<PgQueryResult, PgRow>>, sqlx::Error>
    where
        E: 'q + Execute<'q, Postgres>,
    {
        let mut tx = self.begin().await?;
        let result = (&mut tx).fetch_many(query).try_collect().await;
        tx.end(result).await
    }
}

/// A transaction of a [`Db`]. Dropped without [`Tx::commit`], it is rolled back.
pub struct Tx {
    tx: sqlx::Transaction<'static, Postgres>,
    pooler: Pooler,
}

impl fmt::Debug for Tx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tx").field("pooler", &self.pooler).finish()
    }
}

impl Tx {
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        self.forget_named().await?;
        self.tx.commit().await
    }

    pub async fn rollback(mut self) -> Result<(), sqlx::Error> {
        self.forget_named().await?;
        self.tx.rollback().await
    }

    /// Commits after a statement that worked, rolls back after one that failed (whose error
    /// is the one returned).
    pub(super) async fn end<T>(self, result: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        match result {
            Ok(v) => self.commit().await.map(|()| v),
            Err(e) => {
                let _ = self.rollback().await;
                Err(e)
            }
        }
    }

    /// The connection, for what runs whole transactions of its own (the migrator).
    pub(super) fn connection(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// After a statement for which sqlx may have named statements of its own: closes them
    /// (through a transaction pooler), then `result`, or the pooler suspected in it.
    async fn after_named<T>(&mut self, result: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        self.forget_named().await?;
        result.map_err(|e| super::suspect(self.pooler, e))
    }

    /// Through a transaction pooler, closes the named statements sqlx prepared on its own
    /// (`describe`, type look-ups) while this transaction still holds the server connection:
    /// after it, another client's statement of the same name would collide with them.
    async fn forget_named(&mut self) -> Result<(), sqlx::Error> {
        if self.pooler == Pooler::Transaction && self.tx.cached_statements_size() > 0 {
            self.tx.clear_cached_statements().await?;
        }
        Ok(())
    }
}

/// What a future or stream of the pool yields, with the error turned into the pooler suspected
/// in it, if any (see `db::suspect`).
trait Suspected<'e>: Sized {
    fn suspected(self, pooler: Pooler) -> Self;
}

impl<'e, T: Send + 'e> Suspected<'e> for BoxFuture<'e, Result<T, sqlx::Error>> {
    fn suspected(self, pooler: Pooler) -> Self {
        self.map_err(move |e| super::suspect(pooler, e)).boxed()
    }
}

impl<'e, T: Send + 'e> Suspected<'e> for BoxStream<'e, Result<T, sqlx::Error>> {
    fn suspected(self, pooler: Pooler) -> Self {
        self.map_err(move |e| super::suspect(pooler, e)).boxed()
    }
}

/// A statement sent as the unnamed one, whatever it asked for.
struct Unnamed<E>(E);

impl<'q, E: Execute<'q, Postgres>> Execute<'q, Postgres> for Unnamed<E> {
    fn sql(&self) -> &'q str {
        self.0.sql()
    }

    fn statement(&self) -> Option<&PgStatement<'q>> {
        self.0.statement()
    }

    fn take_arguments(&mut self) -> Result<Option<PgArguments>, BoxDynError> {
        self.0.take_arguments()
    }

    fn persistent(&self) -> bool {
        false
    }
}

type Step = Either<PgQueryResult, PgRow>;

impl<'c> Executor<'c> for &'c Db {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, Result<Step, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let pooler = self.pooler;
        match pooler {
            Pooler::Transaction => futures::stream::once(self.alone(query))
                .map_ok(|steps| futures::stream::iter(steps.into_iter().map(Ok)))
                .try_flatten()
                .boxed(),
            Pooler::None | Pooler::Session => (&self.pool).fetch_many(query).suspected(pooler),
        }
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let pooler = self.pooler;
        match pooler {
            Pooler::Transaction => async move {
                let steps = self.alone(query).await?;
                Ok(steps.into_iter().find_map(Either::right))
            }
            .boxed(),
            Pooler::None | Pooler::Session => (&self.pool).fetch_optional(query).suspected(pooler),
        }
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement<'q>, sqlx::Error>>
    where
        'c: 'e,
    {
        let pooler = self.pooler;
        match pooler {
            Pooler::Transaction => async move {
                let mut tx = self.begin().await?;
                let prepared = (&mut tx).prepare_with(sql, parameters).await;
                tx.end(prepared).await
            }
            .boxed(),
            Pooler::None | Pooler::Session => {
                (&self.pool).prepare_with(sql, parameters).suspected(pooler)
            }
        }
    }

    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> BoxFuture<'e, Result<Describe<Postgres>, sqlx::Error>>
    where
        'c: 'e,
    {
        let pooler = self.pooler;
        match pooler {
            Pooler::Transaction => async move {
                let mut tx = self.begin().await?;
                let described = (&mut tx).describe(sql).await;
                tx.end(described).await
            }
            .boxed(),
            Pooler::None | Pooler::Session => (&self.pool).describe(sql).suspected(pooler),
        }
    }
}

impl<'c> Executor<'c> for &'c mut Tx {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, Result<Step, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let pooler = self.pooler;
        let conn: &'c mut PgConnection = &mut self.tx;
        match pooler {
            Pooler::Transaction => conn.fetch_many(Unnamed(query)),
            Pooler::None | Pooler::Session => conn.fetch_many(query).suspected(pooler),
        }
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let pooler = self.pooler;
        let conn: &'c mut PgConnection = &mut self.tx;
        match pooler {
            Pooler::Transaction => conn.fetch_optional(Unnamed(query)),
            Pooler::None | Pooler::Session => conn.fetch_optional(query).suspected(pooler),
        }
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement<'q>, sqlx::Error>>
    where
        'c: 'e,
    {
        async move {
            let prepared = (&mut *self.tx).prepare_with(sql, parameters).await;
            self.after_named(prepared).await
        }
        .boxed()
    }

    /// sqlx describes with a named statement (and names its own type look-ups), kept in the
    /// connection's cache; through a transaction pooler they are closed at once.
    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> BoxFuture<'e, Result<Describe<Postgres>, sqlx::Error>>
    where
        'c: 'e,
    {
        async move {
            let described = (&mut *self.tx).describe(sql).await;
            self.after_named(described).await
        }
        .boxed()
    }
}
