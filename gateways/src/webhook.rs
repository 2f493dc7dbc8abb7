//! The webhook sender: one HTTP POST per delivery attempt, with a bounded time, no redirects
//! followed (an allowed host could point the request at one that is not) and the answer's body
//! left unread (only its status counts).

use std::time::Duration;

use async_trait::async_trait;
use commands::webhooks::{Sent, WebhookSender};

/// Sends deliveries with `reqwest`.
pub struct HttpWebhookSender {
    client: reqwest::Client,
}

impl HttpWebhookSender {
    /// A sender whose attempts give up after `timeout` (connection included).
    pub fn new(timeout: Duration) -> Result<Self, reqwest::Error> {
        Ok(HttpWebhookSender {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(timeout.min(Duration::from_secs(5)))
                .timeout(timeout)
                .build()?,
        })
    }
}

#[async_trait]
impl WebhookSender for HttpWebhookSender {
    async fn post(&self, url: &str, headers: &[(&'static str, String)], body: &[u8]) -> Sent {
        let mut request = self.client.post(url).body(body.to_vec());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        match request.send().await {
            Ok(res) => Sent::Answered(res.status().as_u16()),
            Err(e) if e.is_timeout() => {
                Sent::NoAnswer("the receiver did not answer in time".into())
            }
            Err(e) if e.is_connect() => Sent::NoAnswer("could not connect to the receiver".into()),
            // Without the URL: the log records this, and a URL may carry a receiver's token.
            Err(e) => Sent::NoAnswer(format!("the request failed: {}", e.without_url())),
        }
    }
}
