use eventbus::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
pub struct ChatCreated {
    pub chat_id: u64,
}

pub mod handlers {
    pub mod chat {
        use eventbus::prelude::*;

        use crate::ChatCreated;

        #[event_handler]
        pub async fn notify(ev: ChatCreated) -> anyhow::Result<()> {
            let _ = ev.chat_id;
            Ok(())
        }

        #[event_handler]
        pub(crate) async fn audit(
            ev: crate::ChatCreated,
            ctx: eventbus::Context,
        ) -> anyhow::Result<()> {
            let _ = (ev, ctx);
            Ok(())
        }

        // Same name as the handler in the parent module: each lives in its own `const _`.
        #[event_handler(name = "chat.project")]
        pub(super) async fn project(ev: ChatCreated) -> anyhow::Result<()> {
            let _ = ev;
            Ok(())
        }
    }

    #[eventbus::event_handler]
    pub async fn project(ev: super::ChatCreated) -> anyhow::Result<()> {
        let _ = ev;
        Ok(())
    }
}

fn main() {
    let _ = handlers::chat::notify;
    let _ = handlers::chat::audit;
    let _ = handlers::project;
}
