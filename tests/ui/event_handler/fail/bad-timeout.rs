use eventbus::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
struct ChatCreated {
    chat_id: u64,
}

#[event_handler(timeout = "0s")]
async fn never_runs(ev: ChatCreated) -> anyhow::Result<()> {
    let _ = ev;
    Ok(())
}

#[event_handler(timeout = "half a minute")]
async fn unparsable(ev: ChatCreated) -> anyhow::Result<()> {
    let _ = ev;
    Ok(())
}

#[event_handler(timeout = "1500us")]
async fn sub_millisecond(ev: ChatCreated) -> anyhow::Result<()> {
    let _ = ev;
    Ok(())
}

fn main() {}
