use eventbus::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
struct ChatCreated {
    chat_id: u64,
}

#[event_handler(timeout = "30s")]
async fn bounded(_ev: ChatCreated) -> anyhow::Result<()> {
    Ok(())
}

#[event_handler(name = "projection.slow", timeout = "1m 30s", retries = 2, backoff = "1s")]
async fn slow(_ev: ChatCreated) -> anyhow::Result<()> {
    Ok(())
}

#[event_handler(name = "projection.tight^fast", timeout = "1ms")]
async fn tight(_ev: ChatCreated) -> anyhow::Result<()> {
    Ok(())
}

fn main() {}
