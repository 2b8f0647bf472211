use eventbus::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "chat created")]
struct ChatCreated {
    chat_id: u64,
}

// The fallback impl keeps this compiling: no second error about `DomainEvent`.
fn name() -> &'static str {
    ChatCreated::NAME
}

fn main() {
    let _ = name();
}
