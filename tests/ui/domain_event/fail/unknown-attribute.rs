use eventbus::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(channel = "chats")]
struct ChatCreated {
    chat_id: u64,
}

fn main() {}
