use eventbus::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "chat.created", version = 2, name = "chat.opened")]
struct ChatCreated {
    chat_id: u64,
}

fn main() {}
