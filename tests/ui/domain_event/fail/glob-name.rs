use eventbus::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "chat.*")]
struct ChatCreated {
    chat_id: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "chat\\closed")]
struct ChatClosed {
    chat_id: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "chat.{renamed}")]
struct ChatRenamed {
    chat_id: u64,
}

// The fallback impl keeps these compiling: no second error about `DomainEvent`.
const _: [&str; 3] = [ChatCreated::NAME, ChatClosed::NAME, ChatRenamed::NAME];

fn main() {}
