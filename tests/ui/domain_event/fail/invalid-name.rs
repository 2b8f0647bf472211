use eventbus::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "chat created")]
struct ChatCreated {
    chat_id: u64,
}

// The fallback impl keeps this compiling: no second error about `DomainEvent`.
const _: &str = ChatCreated::NAME;

fn main() {}
