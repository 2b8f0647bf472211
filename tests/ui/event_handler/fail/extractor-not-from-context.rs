use eventbus::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
struct ChatCreated {
    chat_id: u64,
}

struct Db;

#[event_handler]
async fn notify(ev: ChatCreated, ctx: Context, db: Db) -> anyhow::Result<()> {
    let _ = (ev, ctx, db);
    Ok(())
}

fn main() {}
