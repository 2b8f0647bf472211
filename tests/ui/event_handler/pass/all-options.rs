use eventbus::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
struct ChatCreated {
    chat_id: u64,
}

#[derive(Clone)]
struct Db;

#[derive(Debug)]
enum MyError {
    Gone,
}

impl std::fmt::Display for MyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MyError::Gone => f.write_str("gone"),
        }
    }
}

#[event_handler(
    name = "projection.chat",
    retries = 5,
    backoff = "100ms",
    max_backoff = "1m 30s",
    timeout = "30s",
    concurrency = 8,
    crate = "::eventbus"
)]
async fn project(mut ev: ChatCreated, _ctx: Context, State(_db): State<Db>) -> Result<(), MyError> {
    ev.chat_id += 1;
    if ev.chat_id == 0 {
        Err(MyError::Gone)
    } else {
        Ok(())
    }
}

#[event_handler(retries = 0, backoff = "2s")]
async fn no_retries(_ev: ChatCreated) -> anyhow::Result<()> {
    Ok(())
}

fn main() {}
