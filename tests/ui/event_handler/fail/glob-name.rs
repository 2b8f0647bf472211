use eventbus::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
struct ChatCreated {
    chat_id: u64,
}

#[event_handler(name = "projection.*")]
async fn star(ev: ChatCreated) -> anyhow::Result<()> {
    let _ = ev;
    Ok(())
}

#[event_handler(name = "projection\\chat")]
async fn backslash(ev: ChatCreated) -> anyhow::Result<()> {
    let _ = ev;
    Ok(())
}

#[event_handler(name = "projection.[chat]")]
async fn brackets(ev: ChatCreated) -> anyhow::Result<()> {
    let _ = ev;
    Ok(())
}

fn main() {}
