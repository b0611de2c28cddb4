//! The one storage interface. Handlers never see it directly: they use the
//! typed [`super::Store`], which keeps its documents in a [`Backend`]. A
//! backend is an ordered key-value store with atomic, durable commits, so
//! PostgreSQL (one `(collection, key, value)` table) can replace sled by
//! implementing this trait alone.

/// A named set of documents (a sled tree; a partition of the SQL table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Collection {
    Meta,
    Users,
    /// user name -> user id, for unique names.
    UserNames,
    Tokens,
    Gateways,
    Sessions,
    Relays,
    Audit,
    /// gateway id ++ session id of sessions waiting for approval or active.
    LiveSessions,
    /// Tunnel subnet index -> the session holding it.
    Subnets,
    /// Issued configuration id -> what its watch token needs: the session,
    /// the user, the token's hash, and how the configuration ended.
    Configs,
    /// Hash of a web console session's cookie -> its record.
    ConsoleSessions,
}

impl Collection {
    pub const ALL: [Collection; 12] = [
        Collection::Meta,
        Collection::Users,
        Collection::UserNames,
        Collection::Tokens,
        Collection::Gateways,
        Collection::Sessions,
        Collection::Relays,
        Collection::Audit,
        Collection::LiveSessions,
        Collection::Subnets,
        Collection::Configs,
        Collection::ConsoleSessions,
    ];

    /// Its place in [`Collection::ALL`], which lists the variants in
    /// declaration order.
    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn name(self) -> &'static str {
        match self {
            Collection::Meta => "meta",
            Collection::Users => "users",
            Collection::UserNames => "user_names",
            Collection::Tokens => "tokens",
            Collection::Gateways => "gateways",
            Collection::Sessions => "sessions",
            Collection::Relays => "relays",
            Collection::Audit => "audit",
            Collection::LiveSessions => "live_sessions",
            Collection::Subnets => "subnets",
            Collection::Configs => "configs",
            Collection::ConsoleSessions => "console_sessions",
        }
    }
}

/// A stored key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// One change in a commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put { collection: Collection, key: Vec<u8>, value: Vec<u8> },
    Delete { collection: Collection, key: Vec<u8> },
}

/// A precondition of a commit: the key holds exactly `value` (None: absent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expect {
    pub collection: Collection,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// Changes applied together or not at all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub expect: Vec<Expect>,
    pub ops: Vec<Op>,
}

impl Batch {
    pub fn put(
        mut self,
        collection: Collection,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Batch {
        self.ops.push(Op::Put { collection, key: key.into(), value: value.into() });
        self
    }

    pub fn delete(mut self, collection: Collection, key: impl Into<Vec<u8>>) -> Batch {
        self.ops.push(Op::Delete { collection, key: key.into() });
        self
    }

    /// Adds every precondition and change of `other`, after this batch's own.
    pub fn append(mut self, other: Batch) -> Batch {
        self.expect.extend(other.expect);
        self.ops.extend(other.ops);
        self
    }

    /// Requires `key` to hold `value` (None: to be absent) when committing.
    pub fn expect(
        mut self,
        collection: Collection,
        key: impl Into<Vec<u8>>,
        value: Option<Vec<u8>>,
    ) -> Batch {
        self.expect.push(Expect { collection, key: key.into(), value });
        self
    }

    /// A batch that never holds, whatever is stored: it expects `key` both
    /// absent and present (empty). Committed, alone or as what a group's
    /// [`Finish`] adds, it fails as a conflict on `collection` and changes
    /// nothing: the way to abort a group commit from its `finish`.
    pub fn impossible(collection: Collection, key: impl Into<Vec<u8>>) -> Batch {
        let key = key.into();
        Batch::default().expect(collection, key.clone(), None).expect(collection, key, Some(Vec::new()))
    }
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum BackendError {
    /// A precondition did not hold; nothing was changed.
    #[error("conflict on {collection:?}: the stored value changed")]
    Conflict { collection: Collection },
    #[error("storage: {0}")]
    Io(String),
    /// The storage cannot be reached now (a database that is down or
    /// restarting); nothing was changed, or the outcome is unknown. Worth
    /// trying again later.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

/// What a group commit adds after its batches, from which of them held and
/// the value of the group's locked key (see [`Backend::commit_group`]).
pub type Finish = dyn Fn(&[bool], Option<&[u8]>) -> Batch + Send + Sync;

/// A key a group commit locks before it calls its [`Finish`].
pub type Lock = (Collection, Vec<u8>);

pub trait Backend: Send + Sync + 'static {
    fn get(&self, collection: Collection, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError>;

    /// The values of `keys`, in their order (None for an absent key). A
    /// database answers them in one round trip rather than one each. No
    /// snapshot is promised: a commit between two of the reads may show in
    /// one and not the other, as with separate calls of `get`.
    fn get_many(
        &self,
        collection: Collection,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        keys.iter().map(|key| self.get(collection, key)).collect()
    }

    /// The values of `keys`, each of its own collection, in their order
    /// (None for an absent key); one round trip on a database, as
    /// [`Backend::get_many`], and no snapshot promised either.
    fn get_each(&self, keys: &[(Collection, Vec<u8>)]) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        keys.iter().map(|(collection, key)| self.get(*collection, key)).collect()
    }

    /// Up to `limit` entries whose keys start with `prefix`, in key order,
    /// after `after` if given.
    fn scan(
        &self,
        collection: Collection,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, BackendError>;

    /// The last entry of a collection in key order (the audit chain's head).
    fn last(&self, collection: Collection) -> Result<Option<Entry>, BackendError>;

    /// Applies `batch` atomically if every expectation holds. When this
    /// returns Ok the change is durable: a crash afterwards loses nothing.
    fn commit(&self, batch: Batch) -> Result<(), BackendError>;

    /// Commits, in one atomic and durable commit, each of `batches` whose
    /// expectations hold when its turn comes (in order: a batch sees the
    /// changes of the ones before it), and then the batch `finish` makes of
    /// which of them held and of the value `lock` has then (None without a
    /// lock, or when the key is absent). The key `lock` names is locked
    /// after the batches, so its value cannot change before the commit: a
    /// batch that `finish` bases on it, and that changes it, never
    /// conflicts with another group doing the same, it waits for it. Each
    /// batch gets its own outcome: one whose
    /// expectations fail is left out and reported as a conflict, and the
    /// others still commit. The whole group fails, with nothing changed, if
    /// `finish`'s batch does not hold, or on a storage error. `finish` may
    /// be called more than once (a transaction run again) and must give the
    /// same batch for the same outcomes.
    ///
    /// One commit for many batches: one flush, or one transaction, instead
    /// of one each.
    fn commit_group(
        &self,
        batches: Vec<Batch>,
        lock: Option<Lock>,
        finish: std::sync::Arc<Finish>,
    ) -> Result<Vec<Result<(), BackendError>>, BackendError>;

    /// How many groups ([`Backend::commit_group`]) of one process are best
    /// committed at once. Two by default: while one waits for the chain's
    /// head and its commit (a database round trip), the next one already
    /// checks and applies its changes (the head's lock still orders their
    /// entries).
    fn concurrent_groups(&self) -> usize {
        2
    }

    /// A fresh identifier, never returned before (also across restarts).
    fn generate_id(&self) -> Result<u64, BackendError>;
}
