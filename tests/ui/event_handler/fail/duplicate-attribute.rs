use eventbus::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
struct ChatCreated {
    chat_id: u64,
}

#[event_handler(retries = 3, backoff = "100ms", retries = 5)]
async fn notify(ev: ChatCreated) -> anyhow::Result<()> {
    let _ = ev;
    Ok(())
}

fn main() {}
