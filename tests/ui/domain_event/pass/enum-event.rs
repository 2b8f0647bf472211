use eventbus::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[serde(tag = "kind")]
#[event(version = 3)]
enum PaymentSettled {
    Card { last4: String },
    Transfer { iban: String },
    Cash,
}

#[event_handler]
async fn on_payment(ev: PaymentSettled) -> anyhow::Result<()> {
    match ev {
        PaymentSettled::Card { last4 } => drop(last4),
        PaymentSettled::Transfer { iban } => drop(iban),
        PaymentSettled::Cash => {}
    }
    Ok(())
}

fn main() {
    assert_eq!(PaymentSettled::NAME, "payment_settled");
    assert_eq!(PaymentSettled::VERSION, 3);
}
