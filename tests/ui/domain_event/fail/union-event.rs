use eventbus::prelude::*;

#[derive(DomainEvent)]
union Created {
    id: u64,
    raw: [u8; 8],
}

fn main() {}
