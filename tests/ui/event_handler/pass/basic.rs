use eventbus::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "chat.created")]
struct ChatCreated {
    chat_id: u64,
    title: String,
}

#[event_handler]
async fn notify(ev: ChatCreated) -> anyhow::Result<()> {
    println!("{} {}", ev.chat_id, ev.title);
    Ok(())
}

#[event_handler]
async fn log_created(
    _: ChatCreated,
    ctx: Context,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let _ = ctx.event_id();
    Ok(())
}

fn main() {
    // The function stays an ordinary async fn.
    let _fut = notify(ChatCreated {
        chat_id: 1,
        title: "hello".into(),
    });
}
