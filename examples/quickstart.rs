//! Quickstart: two events, three handlers, a few published events, Ctrl-C to stop.
//!
//! ```text
//! cargo run -p examples --example quickstart        # REDIS_URL defaults to redis://127.0.0.1:6379
//! ```
//!
//! Settings come from the environment (`REDIS_URL`, `EVENTBUS_NAMESPACE`, ...; see the README).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use eventbus::prelude::*;

/// A chat was created.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "chat.created")]
pub struct ChatCreated {
    /// The chat.
    pub chat_id: u64,
    /// Its title.
    pub title: String,
}

/// A message was posted in a chat.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
pub struct MessagePosted {
    /// The chat.
    pub chat_id: u64,
    /// The text.
    pub text: String,
}

/// A stand-in for a database: chat titles by id.
#[derive(Clone, Default)]
pub struct Db(Arc<Mutex<HashMap<u64, String>>>);

/// Tells the members of a new chat, and posts a welcome message (a follow-up event that carries
/// the correlation id on).
#[event_handler]
async fn notify_members(ev: ChatCreated, ctx: Context) -> anyhow::Result<()> {
    tracing::info!(chat_id = ev.chat_id, event_id = %ctx.event_id(), "notifying members");
    ctx.publish(&MessagePosted {
        chat_id: ev.chat_id,
        text: format!("welcome to {}", ev.title),
    })
    .await?;
    Ok(())
}

/// Keeps a read model of chats, with its own retry policy.
#[event_handler(
    name = "projection.chat",
    retries = 5,
    backoff = "100ms",
    concurrency = 4
)]
async fn project_chat(ev: ChatCreated, db: State<Db>) -> anyhow::Result<()> {
    let mut chats =
        db.0.0
            .lock()
            .map_err(|_| anyhow::anyhow!("db lock poisoned"))?;
    chats.insert(ev.chat_id, ev.title);
    tracing::info!(chats = chats.len(), "projected chat");
    Ok(())
}

/// Fails on its first attempt, to show a retry with backoff.
#[event_handler(retries = 3, backoff = "200ms")]
async fn index_message(ev: MessagePosted, ctx: Context) -> anyhow::Result<()> {
    if ctx.attempt() == 1 {
        anyhow::bail!("search index not warmed up yet");
    }
    tracing::info!(chat_id = ev.chat_id, text = %ev.text, attempt = ctx.attempt(), "indexed message");
    Ok(())
}

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

async fn run() -> eventbus::Result<()> {
    let bus = Bus::builder()
        .with_env()?
        .state(Db::default())
        .build()
        .await?;
    // Published before the handlers start: a new consumer group starts at the beginning of the
    // stream, so nothing published earlier is missed.
    for (chat_id, title) in [(1, "general"), (2, "random")] {
        let id = bus
            .publish(&ChatCreated {
                chat_id,
                title: title.into(),
            })
            .await?;
        tracing::info!(%id, chat_id, "published chat.created");
    }
    tracing::info!("running; press Ctrl-C to stop");
    bus.run().await // start every handler, wait for SIGINT/SIGTERM, drain
}
