use eventbus::prelude::*;

#[event_handler]
struct Notifier;

fn main() {}
