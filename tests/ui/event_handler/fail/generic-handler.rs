use eventbus::prelude::*;

#[event_handler]
async fn notify<E: DomainEvent>(ev: E) -> anyhow::Result<()> {
    let _ = ev;
    Ok(())
}

fn main() {}
