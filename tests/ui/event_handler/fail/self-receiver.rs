use eventbus::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
struct ChatCreated {
    chat_id: u64,
}

struct Notifier;

impl Notifier {
    #[event_handler]
    async fn notify(&self, ev: ChatCreated) -> anyhow::Result<()> {
        let _ = ev;
        Ok(())
    }
}

fn main() {}
