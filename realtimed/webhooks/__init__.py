"""
Webhooks: every stored message is POSTed, signed, to each webhook URL of its
channel, with retries that survive restarts.

- `realtimed.webhooks.policy` and `realtimed.webhooks.signing`: pure rules
  (which addresses may be called, what an answer means, the backoff, the
  Standard Webhooks headers and signature);
- `realtimed.webhooks.outbox`: the deliveries waiting in PostgreSQL and the
  statements that claim, record and prune them;
- `realtimed.webhooks.endpoint`: the HTTP client, connecting only to checked
  addresses;
- `realtimed.webhooks.answers`: reading a bounded part of an answer;
- `realtimed.webhooks.outcomes`: what becomes of each attempt;
- `realtimed.webhooks.service`: `WebhookService`, which sends them.
"""
