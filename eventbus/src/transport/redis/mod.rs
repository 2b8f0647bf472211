//! The Redis backend: the only place that names `redis::`.

pub(crate) mod coalesce;
pub(crate) mod conn;
pub(crate) mod dead_letters;
pub(crate) mod errors;
pub(crate) mod preflight;
pub(crate) mod publish;
pub(crate) mod pubsub;
pub(crate) mod script;
pub(crate) mod stream;

use std::sync::Arc;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::transport::Route;

/// The Redis backend of one bus: the client (for new connections: blocking reads, Pub/Sub) and
/// the shared, supervised connection every other command uses.
#[derive(Clone, Debug)]
pub(crate) struct Redis {
    pub(crate) client: ::redis::Client,
    pub(crate) conn: conn::SharedConn,
    pub(crate) config: Arc<Config>,
}

impl Redis {
    /// Connects: the client, the shared connection, the eviction check and the ACL preflight of
    /// `routes` (a publish-only bus when empty).
    pub(crate) async fn connect(config: Arc<Config>, routes: &[Route]) -> Result<Redis> {
        let client = conn::client(&config)?;
        let mut shared = conn::shared(&client, &config).await?;
        check_eviction(&mut shared, &config).await?;
        preflight::check_permissions(&mut shared, &config, routes).await?; // ops: ACL DRYRUN
        Ok(Redis {
            client,
            conn: shared,
            config,
        })
    }
}

/// Streams are the only copy of undelivered events: warn (or refuse) when Redis may evict them.
async fn check_eviction(conn: &mut conn::SharedConn, config: &Config) -> Result<()> {
    let reply: ::redis::RedisResult<Vec<String>> = ::redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(conn)
        .await;
    let policy = match reply {
        Ok(pair) => pair.into_iter().nth(1).unwrap_or_default(),
        Err(e) => {
            // Managed services and ACL users often may not run CONFIG: skip the check.
            tracing::debug!(error = %e, "cannot read maxmemory-policy; eviction check skipped");
            return Ok(());
        }
    };
    if !policy.starts_with("allkeys-") {
        return Ok(());
    }
    if config.refuse_eviction {
        return Err(Error::config(
            "maxmemory-policy",
            policy,
            "Redis may evict streams, losing events and consumer groups: set `maxmemory-policy noeviction` (or a volatile-* policy), or drop `refuse_evicting_redis`",
        ));
    }
    tracing::warn!(
        maxmemory_policy = %policy,
        "Redis maxmemory-policy {policy} may evict event streams under memory pressure, losing events and consumer groups; use noeviction for an event bus"
    );
    Ok(())
}
