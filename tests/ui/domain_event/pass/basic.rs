use eventbus::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
struct ChatCreated {
    chat_id: u64,
    title: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "chat.renamed-v2_x", version = 2)]
struct ChatRenamed(u64, String);

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
struct HTTPRequestSent;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
struct Order2Paid {}

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
pub struct r#Match;

mod renamed {
    pub extern crate eventbus as bus;
}

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(crate = "renamed::bus", name = "via.renamed.crate")]
struct ViaRenamedCrate;

fn main() {
    assert_eq!(ChatCreated::NAME, "chat_created");
    assert_eq!(ChatCreated::VERSION, 1);
    assert_eq!(ChatRenamed::NAME, "chat.renamed-v2_x");
    assert_eq!(ChatRenamed::VERSION, 2);
    assert_eq!(HTTPRequestSent::NAME, "http_request_sent");
    assert_eq!(Order2Paid::NAME, "order2_paid");
    assert_eq!(r#Match::NAME, "match");
    assert_eq!(ViaRenamedCrate::NAME, "via.renamed.crate");
}
