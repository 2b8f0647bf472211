//! Broadcast events: two bus instances in one process both receive every cache invalidation.
//!
//! ```text
//! cargo run -p examples --example broadcast     # REDIS_URL defaults to redis://127.0.0.1:6379
//! ```
//!
//! A durable event is handled once per handler, whichever replica reads it first; a broadcast
//! event (`#[event(broadcast)]`, Redis Pub/Sub) is handled by every running instance, at most
//! once, and only by instances subscribed when it is published. Here two buses stand in for two
//! replicas of a service, each with its own in-memory cache. The example publishes a few
//! invalidations from one of them, waits until both caches dropped the keys, shuts both down and
//! exits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventbus::prelude::*;

/// A cache entry is stale everywhere: every instance must drop it.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "cache.invalidated", broadcast)]
pub struct CacheInvalidated {
    /// The stale key.
    pub key: String,
}

/// One instance's in-memory cache.
#[derive(Clone)]
pub struct Cache {
    instance: &'static str,
    entries: Arc<Mutex<HashMap<String, String>>>,
}

impl Cache {
    fn warm(instance: &'static str, keys: &[&str]) -> Cache {
        let entries = keys
            .iter()
            .map(|k| ((*k).to_owned(), format!("cached value of {k}")))
            .collect();
        Cache {
            instance,
            entries: Arc::new(Mutex::new(entries)),
        }
    }

    fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(usize::MAX)
    }
}

/// Runs in every instance for every invalidation.
#[event_handler]
async fn evict(ev: CacheInvalidated, cache: State<Cache>) -> anyhow::Result<()> {
    let removed = cache
        .entries
        .lock()
        .map_err(|_| anyhow::anyhow!("cache lock poisoned"))?
        .remove(&ev.key);
    tracing::info!(
        instance = cache.instance,
        key = %ev.key,
        was_cached = removed.is_some(),
        "evicted"
    );
    Ok(())
}

const KEYS: [&str; 3] = ["user:1", "user:2", "settings"];

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if let Err(e) = run().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let caches = [Cache::warm("a", &KEYS), Cache::warm("b", &KEYS)];
    let mut buses = Vec::new();
    for cache in &caches {
        let bus = Bus::builder()
            .redis_url(url.as_str())
            .namespace("broadcast-example")
            .consumer(format!("instance-{}", cache.instance))
            .connect_timeout(Duration::from_secs(2))
            .state(cache.clone())
            .build()
            .await?;
        buses.push(bus);
    }
    // `start` returns once Redis confirmed the subscriptions: both instances get what follows.
    let mut running = Vec::new();
    for bus in &buses {
        running.push(bus.start().await?);
    }

    for key in KEYS {
        let id = buses[0]
            .publish(&CacheInvalidated { key: key.into() })
            .await?;
        tracing::info!(%id, key, "published cache.invalidated from instance a");
    }

    let deadline = Instant::now() + Duration::from_secs(5);
    while caches.iter().any(|c| c.len() > 0) {
        if Instant::now() > deadline {
            anyhow::bail!("the invalidations did not reach both instances within 5 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await; // ok: polling with a deadline
    }
    tracing::info!("both instances evicted every key");

    for r in running {
        r.shutdown().await?;
    }
    Ok(())
}
