use eventbus::prelude::*;

#[event_handler]
async fn notify() -> anyhow::Result<()> {
    Ok(())
}

fn main() {}
