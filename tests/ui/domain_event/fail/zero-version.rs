use eventbus::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(version = 0)]
struct ChatCreated {
    chat_id: u64,
}

fn main() {}
