use eventbus::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(fanout)]
struct CacheInvalidated {
    key: String,
}

fn main() {}
