use eventbus::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
struct ChatCreated {
    chat_id: u64,
}

#[event_handler]
async fn notify(ev: &ChatCreated) -> anyhow::Result<()> {
    let _ = ev.chat_id;
    Ok(())
}

fn main() {}
