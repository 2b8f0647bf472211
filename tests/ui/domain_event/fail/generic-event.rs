use eventbus::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
struct Created<T> {
    item: T,
}

fn main() {}
