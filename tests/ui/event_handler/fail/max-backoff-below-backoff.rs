use eventbus::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
struct ChatCreated {
    chat_id: u64,
}

#[event_handler(backoff = "2s", max_backoff = "500ms")]
async fn notify(ev: ChatCreated) -> anyhow::Result<()> {
    let _ = ev;
    Ok(())
}

fn main() {}
