use eventbus::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
struct ChatCreated {
    chat_id: u64,
}

#[event_handler]
async fn notify(ev: ChatCreated) -> Result<u64, String> {
    Ok(ev.chat_id)
}

fn main() {}
