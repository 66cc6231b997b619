//! Where the shared store's primary is, and the connections to it: one fixed address, or
//! the server the sentinels name, asked for again after a failure so that a failover is
//! followed.
//!
//! A connection manager reconnects to the address it was made for. That is right for a
//! fixed address, and wrong after a Sentinel failover: the old primary is gone, or back as
//! a replica that refuses writes. With Sentinel, a failed command therefore drops the
//! connections, and the next use asks the sentinels where the primary is now.

use std::{sync::Arc, time::Duration};

use arc_swap::ArcSwapOption;
use redis::{
    Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo as _, RedisConnectionInfo, TlsMode,
    aio::{ConnectionManager, ConnectionManagerConfig},
    sentinel::{Sentinel, SentinelNodeConnectionInfo},
};
use tokio::sync::{Mutex, OnceCell};

use super::{REDIS_TIMEOUT, SetupError, StoreError};
use crate::config::{RedisConfig, RedisTarget};

/// The primary of the shared store, found and connected on first use.
pub(super) struct Primary {
    /// The connections in use: none before the first use, and none after a failure when
    /// the primary may have moved.
    current: ArcSwapOption<Connected>,
    /// How the primary is found. Locked while connecting, so that the callers who find no
    /// connection wait for one attempt instead of each making (and each asking the
    /// sentinels) their own. An async mutex: it is held across that attempt's awaits, on
    /// the slow path only.
    target: Mutex<Target>,
    /// Whether a failure may mean that the primary moved.
    follows: bool,
}

enum Target {
    /// One address.
    Fixed(Client),
    /// The primary of `master`, as the sentinels say; `servers` is how to log in to it.
    Sentinel {
        sentinel: Box<Sentinel>,
        master: String,
        servers: SentinelNodeConnectionInfo,
    },
}

/// Connections to one primary.
pub(super) struct Connected {
    /// For subscriptions, which need connections of their own.
    pub(super) client: Client,
    /// Shared by every command but chain writes.
    pub(super) commands: ConnectionManager,
    /// Chain writes, which wait (`WAIT`) for replicas: a connection of their own, since a
    /// wait holds up every later command on its connection.
    durable: OnceCell<ConnectionManager>,
}

impl Primary {
    /// Reads the passwords now; connects on first use.
    pub(super) fn new(config: &RedisConfig) -> Result<Self, SetupError> {
        let password = config
            .password
            .as_ref()
            .map(|p| p.load().map_err(SetupError::Password))
            .transpose()?
            .map(|p| p.expose().to_owned());
        let (target, follows) = match &config.target {
            RedisTarget::Url(url) => {
                let mut info = url
                    .as_str()
                    .into_connection_info()
                    .map_err(|e| SetupError::Url(e.kind()))?;
                if password.is_some() {
                    info.redis.password = password;
                }
                let client = Client::open(info).map_err(|e| SetupError::Client(e.kind()))?;
                (Target::Fixed(client), false)
            }
            RedisTarget::Sentinel(sentinel) => {
                let own_password = sentinel
                    .password
                    .as_ref()
                    .map(|p| p.load().map_err(SetupError::SentinelPassword))
                    .transpose()?
                    .map(|p| p.expose().to_owned());
                let nodes: Vec<ConnectionInfo> = sentinel
                    .nodes
                    .iter()
                    .map(|node| ConnectionInfo {
                        addr: if sentinel.tls {
                            ConnectionAddr::TcpTls {
                                host: node.host.clone(),
                                port: node.port,
                                insecure: false,
                                tls_params: None,
                            }
                        } else {
                            ConnectionAddr::Tcp(node.host.clone(), node.port)
                        },
                        redis: RedisConnectionInfo {
                            password: own_password.clone(),
                            ..RedisConnectionInfo::default()
                        },
                    })
                    .collect();
                let servers = SentinelNodeConnectionInfo {
                    tls_mode: sentinel.tls.then_some(TlsMode::Secure),
                    redis_connection_info: Some(RedisConnectionInfo {
                        password,
                        ..RedisConnectionInfo::default()
                    }),
                };
                let target = Target::Sentinel {
                    sentinel: Box::new(
                        Sentinel::build(nodes).map_err(|e| SetupError::Sentinel(e.kind()))?,
                    ),
                    master: sentinel.master.clone(),
                    servers,
                };
                (target, true)
            }
        };
        Ok(Self {
            current: ArcSwapOption::empty(),
            target: Mutex::new(target),
            follows,
        })
    }

    /// The connections to the primary, made now if there are none.
    pub(super) async fn connected(&self) -> Result<Arc<Connected>, StoreError> {
        if let Some(connected) = self.current.load_full() {
            return Ok(connected);
        }
        // Boxed: the sentinel client's futures nest deep, and every future that uses the
        // store would otherwise carry them inline (past the compiler's layout depth).
        Box::pin(self.connect()).await
    }

    async fn connect(&self) -> Result<Arc<Connected>, StoreError> {
        let mut target = self.target.lock().await;
        // Another caller may have connected while this one waited.
        if let Some(connected) = self.current.load_full() {
            return Ok(connected);
        }
        let client = match &mut *target {
            Target::Fixed(client) => client.clone(),
            Target::Sentinel {
                sentinel,
                master,
                servers,
            } => {
                // The crate sets no deadline on its connections to the sentinels or to the
                // server it checks (`ROLE`): this one bounds them all.
                tokio::time::timeout(
                    REDIS_TIMEOUT * 2,
                    sentinel.async_master_for(master, Some(servers)),
                )
                .await
                .map_err(|_| StoreError::Redis("no sentinel named the primary in time".into()))??
            }
        };
        let commands =
            ConnectionManager::new_with_config(client.clone(), manager_config(REDIS_TIMEOUT))
                .await?;
        let connected = Arc::new(Connected {
            client,
            commands,
            durable: OnceCell::new(),
        });
        self.current.store(Some(connected.clone()));
        Ok(connected)
    }

    /// A command failed: with Sentinel the primary may have moved, so the next use asks
    /// where it is. (A command that failed on connections already replaced drops their
    /// successors too; that costs one more question to the sentinels.)
    pub(super) fn failed(&self) {
        if self.follows {
            self.current.store(None);
        }
    }
}

impl Connected {
    /// The connection for chain writes, whose `WAIT` may take `ack_timeout`.
    pub(super) async fn durable(
        &self,
        ack_timeout: Duration,
    ) -> Result<ConnectionManager, StoreError> {
        let connection = self
            .durable
            .get_or_try_init(|| {
                ConnectionManager::new_with_config(
                    self.client.clone(),
                    manager_config(REDIS_TIMEOUT + ack_timeout),
                )
            })
            .await?;
        Ok(connection.clone())
    }
}

fn manager_config(response_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(REDIS_TIMEOUT)
        .set_response_timeout(response_timeout)
        .set_number_of_retries(1)
        .set_max_delay(500)
}
